#!/usr/bin/env bash
# Groups the headers of include/gemma3/ into folders by concern, mechanically:
#
#   core/   the model's types and math: config.hpp config_fields.hpp configs.hpp tensor.hpp blas.hpp
#           parameters.hpp activations.hpp forward.hpp backward.hpp generation.hpp footprint.hpp
#   io/     files and formats: file_io.hpp json_read.hpp safetensors.hpp weights_io.hpp checkpoint.hpp
#           config_file.hpp hf_config.hpp config_header.hpp
#   text/   tokenizer.hpp hf_tokenizer_files.hpp
#   train/  optimizer.hpp data.hpp distributed.hpp trainer.hpp
#   ops/, cuda/, detail/ stay as they are; model.hpp stays at the top (the library's entry point).
#
# What it does: `git mv` of each header in the table that is still at the top; then every
# include of a moved header, in every tracked text file, becomes <gemma3/<folder>/<name>> (quoted
# relative includes inside include/gemma3 too), and every mention of its old path in comments and
# documentation follows. Headers that README.md or examples/downstream name get a one-line
# forwarding header at the old path, so the documented includes keep working.
#
# Run it from anywhere in the repository on a clean tree, review `git diff --stat`, build, commit.
# It can be re-run after merging other branches: moved headers are skipped, new includes of old
# paths are rewritten, and headers it does not know are listed (add them to the table).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
python3 - <<'PY'
import os
import re
import subprocess

GROUPS = {
    "core": ["config.hpp", "config_fields.hpp", "configs.hpp", "tensor.hpp", "blas.hpp", "parameters.hpp",
             "activations.hpp", "forward.hpp", "backward.hpp", "generation.hpp", "footprint.hpp"],
    "io": ["file_io.hpp", "json_read.hpp", "safetensors.hpp", "weights_io.hpp", "checkpoint.hpp", "config_file.hpp",
           "hf_config.hpp", "config_header.hpp"],
    "text": ["tokenizer.hpp", "hf_tokenizer_files.hpp"],
    "train": ["optimizer.hpp", "data.hpp", "distributed.hpp", "trainer.hpp"],
}
STAYS = {"model.hpp"}
inc = "include/gemma3"

def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout

# Old path (relative to include/) -> new path, for every header in the table.
moves = {f"gemma3/{name}": f"gemma3/{folder}/{name}" for folder, names in GROUPS.items() for name in names}

# Documented includes: those README.md and the downstream example name, read before rewriting.
documented_text = open("README.md", encoding="utf-8").read()
for dirpath, _, files in os.walk("examples/downstream"):
    for f in files:
        documented_text += open(os.path.join(dirpath, f), encoding="utf-8", errors="replace").read()
documented = {old for old in moves if re.search(r"(?<![\w/])" + re.escape(old) + r"\b", documented_text)}

moved_now = []
for old, new in moves.items():
    src, dst = f"include/{old}", f"include/{new}"
    if os.path.exists(src) and not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        git("mv", src, dst)
        moved_now.append(old)

unknown = sorted(f for f in os.listdir(inc) if f.endswith(".hpp") and f"gemma3/{f}" not in moves and f not in STAYS
                 and not open(os.path.join(inc, f)).read().startswith("// Forwarding header"))
if unknown:
    print("not grouped (add them to the table in tools/reorganize_headers.sh):", " ".join(unknown))

include_line = re.compile(r'^(\s*#\s*include\s*)([<"])([^>"]+)([>"])(.*)$')

def resolve(path_in_repo, spelled, quoted):
    """The include/ relative path an include names, or None if it is not one of ours."""
    if not quoted:
        return spelled if spelled.startswith("gemma3/") else None
    here = os.path.dirname(path_in_repo)
    candidate = os.path.normpath(os.path.join(here, spelled))
    if candidate.startswith("include/gemma3/"):
        return candidate[len("include/"):]
    return None

# After the moves a quoted relative include inside include/gemma3 may point at the old place; the
# old place is what its author meant, so resolve against the file's old directory.
old_location = {f"include/{new}": f"include/{old}" for old, new in moves.items()}

mention = re.compile(r"(?<![\w])(" + "|".join(re.escape(o) for o in sorted(moves, key=len, reverse=True)) + r")(?![\w/])")

changed = 0
for path in git("ls-files").split("\n"):
    if not path or not os.path.isfile(path) or path == "tools/reorganize_headers.sh":
        continue
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError:
        continue
    lines = text.split("\n")
    in_library = path.startswith("include/gemma3/")
    for i, line in enumerate(lines):
        m = include_line.match(line)
        if not m or not in_library and m.group(2) == '"':
            continue
        written_from = old_location.get(path, path)
        target = resolve(written_from, m.group(3), m.group(2) == '"')
        if target is None:
            continue
        new_target = moves.get(target, target)
        # Rewritten: includes of a moved header, and quoted includes in a moved header (its
        # relative paths changed meaning). Everything else is left as it was.
        if new_target != target or (m.group(2) == '"' and path in old_location):
            lines[i] = f"{m.group(1)}<{new_target}>{m.group(5)}"
    new_text = "\n".join(lines)
    new_text = mention.sub(lambda mm: moves[mm.group(1)], new_text)
    if new_text != text:
        open(path, "w", encoding="utf-8").write(new_text)
        changed += 1

for old in sorted(documented):
    stub = f"include/{old}"
    if not os.path.exists(stub):
        open(stub, "w", encoding="utf-8").write(
            f"// Forwarding header: {old} moved to {moves[old]} (tools/reorganize_headers.sh);\n"
            f"// this path keeps working for code written against it.\n#pragma once\n\n#include <{moves[old]}>\n")
        git("add", stub)

print(f"moved {len(moved_now)} headers, rewrote {changed} files, forwarding headers: {' '.join(sorted(documented)) or 'none'}")
PY
