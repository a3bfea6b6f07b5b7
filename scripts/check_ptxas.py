#!/usr/bin/env python3
"""Keeps and checks the register/spill report that `nvcc -Xptxas -v` prints.

  check_ptxas.py capture -- <compiler command...>
      Runs the compiler (as CMake's CUDA_COMPILER_LAUNCHER), passes its output through unchanged
      and saves its stderr, which holds the ptxas report, next to the object file as
      <object>.ptxas.txt. Exits with the compiler's status.

  check_ptxas.py check [--allow-spills REGEX] PATH...
      Reads report files, or directories searched recursively for *.ptxas.txt, prints one line per
      function and architecture (registers, stack frame, spill stores and loads, shared memory), and
      exits with 1 if any function spills registers (unless its demangled name matches REGEX), or if
      no report holds any function at all.
"""
import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
PROPERTIES = re.compile(r"Function properties for (?P<name>\S+)")
FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
USED = re.compile(r"Used (?P<registers>\d+) registers(?:.*?(?P<smem>\d+) bytes smem)?")


def capture(command):
    if not command:
        sys.exit("check_ptxas.py capture: no compiler command after --")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if "-o" in command:
        position = command.index("-o")
        if position + 1 < len(command):
            report = pathlib.Path(command[position + 1] + ".ptxas.txt")
            if result.returncode == 0:
                temporary = report.with_name(report.name + ".tmp")
                temporary.write_bytes(result.stderr)
                os.replace(temporary, report)
            elif report.exists():
                report.unlink()  # a stale report must not outlive a failed compile
    return result.returncode


def parse(text):
    """Returns {(arch, mangled name): {"registers", "stack", "stores", "loads", "smem"}}."""
    functions = {}
    arch = None
    current_entry = None
    pending = None
    for line in text.splitlines():
        entry = ENTRY.search(line)
        if entry:
            arch = entry.group("arch")
            current_entry = (arch, entry.group("name"))
            functions.setdefault(current_entry, {})
            continue
        properties = PROPERTIES.search(line)
        if properties:
            pending = (arch, properties.group("name"))
            continue
        frame = FRAME.search(line)
        if frame and pending is not None:
            record = functions.setdefault(pending, {})
            for key in ("stack", "stores", "loads"):
                record[key] = int(frame.group(key))
            pending = None
            continue
        used = USED.search(line)
        if used and current_entry is not None:
            record = functions[current_entry]
            record["registers"] = int(used.group("registers"))
            record["smem"] = int(used.group("smem") or 0)
    return functions


def demangle(names):
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {name: name for name in names}
    result = subprocess.run([tool], input="\n".join(names), stdout=subprocess.PIPE, text=True)
    lines = result.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {name: name for name in names}


def report_files(paths):
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            yield from sorted(path.rglob("*.ptxas.txt"))
        elif path.exists():
            yield path
        else:
            sys.exit(f"check_ptxas.py: {path} does not exist")


def check(paths, allow_spills):
    functions = {}
    files = list(report_files(paths))
    for path in files:
        for key, record in parse(path.read_text(errors="replace")).items():
            # The same kernel in several objects: keep the worst numbers, so no spill hides.
            kept = functions.setdefault(key, {})
            for field, value in record.items():
                kept[field] = max(kept.get(field, value), value)
    if not functions:
        print(f"check_ptxas.py: no ptxas function report in {', '.join(map(str, paths))} "
              f"({len(files)} report files); was the code compiled with -Xptxas -v through 'capture'?")
        return 1
    names = demangle(sorted({name for _, name in functions}))
    allowed = re.compile(allow_spills) if allow_spills else None
    failures = 0
    print(f"{'arch':7} {'regs':>4} {'stack':>6} {'spill st':>8} {'spill ld':>8} {'smem':>6}  function")
    for (arch, name), record in sorted(functions.items(), key=lambda item: (names[item[0][1]], item[0][0])):
        stores, loads = record.get("stores", 0), record.get("loads", 0)
        spills = stores > 0 or loads > 0
        excused = spills and allowed is not None and allowed.search(names[name])
        marker = "  <-- SPILLS" if spills and not excused else ("  (spills allowed)" if excused else "")
        registers = record.get("registers")
        print(f"{arch:7} {registers if registers is not None else '-':>4} {record.get('stack', 0):>6} {stores:>8} "
              f"{loads:>8} {record.get('smem', 0):>6}  {names[name]}{marker}")
        failures += 1 if spills and not excused else 0
    print(f"{len(functions)} function reports from {len(files)} files; {failures} spilling")
    return 1 if failures else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "capture":
        arguments = sys.argv[2:]
        if arguments and arguments[0] == "--":
            arguments = arguments[1:]
        return capture(arguments)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True)
    check_parser = subcommands.add_parser("check", help="check ptxas reports for register spills")
    check_parser.add_argument("--allow-spills", metavar="REGEX", help="functions (demangled) that may spill")
    check_parser.add_argument("paths", nargs="+", help="report files or directories holding *.ptxas.txt")
    arguments = parser.parse_args()
    return check(arguments.paths, arguments.allow_spills)


if __name__ == "__main__":
    sys.exit(main())
