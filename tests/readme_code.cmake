# The README's minimal trainer and generator are examples/downstream/{train,generate}.cpp, which
# scripts/test.sh compiles and runs against an installed copy: this test fails when the README's
# copy of a file differs from the file, so the code a user copies is the code CI builds.
#   cmake -DREADME=README.md -DFILES="a.cpp;b.cpp" -P readme_code.cmake
file(READ "${README}" readme)
foreach(path ${FILES})
  file(READ "${path}" code)
  string(FIND "${readme}" "```cpp\n${code}```" position)
  if(position EQUAL -1)
    message(FATAL_ERROR "README.md has no ```cpp block equal to ${path}: copy the file into the README again")
  endif()
endforeach()
message(STATUS "README.md holds ${FILES} verbatim")
