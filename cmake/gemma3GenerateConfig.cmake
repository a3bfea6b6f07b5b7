# gemma3_generate_config(NAME <TypeName> JSON <config file> OUTPUT <header> [NAMESPACE <ns>])
#
# Writes a header that defines the compile-time config type <ns>::<TypeName> (default namespace
# gemma3::configs) from a model config file: our model_config.json, or a Hugging Face config.json
# (told apart by their fields). A new architecture then takes one line of CMake; put the OUTPUT's
# folder on the include path of the targets that use it. The header is regenerated when the file
# changes.
#
# The work is done by the library itself, so this file keeps no list of fields: a small program
# around gemma3::generate_config_main() (<gemma3/io/config_header.hpp>) is compiled once per build tree
# at configure time, reads and checks the file exactly as the library does at run time (every
# problem reported at once), and writes the constants from the library's field table. It is rebuilt
# when the library's headers change. Needs a C++20 compiler that can build programs for this
# machine (not a cross-compiler).

set(_gemma3_generate_config_list_dir "${CMAKE_CURRENT_LIST_DIR}")

# Builds (or reuses) the generator program; sets <out_var> to its path.
function(_gemma3_config_generator out_var)
  get_property(tool GLOBAL PROPERTY _gemma3_config_generator)
  if(tool)
    set(${out_var} "${tool}" PARENT_SCOPE)
    return()
  endif()

  # Where the headers are: an installed package's imported target knows; in a source checkout
  # they are next to this file's folder.
  set(link_libraries "")
  set(include_dirs "")
  if(TARGET gemma3::gemma3)
    get_target_property(imported gemma3::gemma3 IMPORTED)
  else()
    set(imported FALSE)
  endif()
  if(imported)
    get_target_property(include_dirs gemma3::gemma3 INTERFACE_INCLUDE_DIRECTORIES)
    set(link_libraries gemma3::gemma3)
  else()
    get_filename_component(include_dirs "${_gemma3_generate_config_list_dir}/../include" ABSOLUTE)
    if(TARGET nlohmann_json::nlohmann_json)
      set(link_libraries nlohmann_json::nlohmann_json)
    endif()
  endif()

  # Rebuild only when a header changed: a hash of all of them.
  set(headers "")
  foreach(dir IN LISTS include_dirs)
    file(GLOB_RECURSE found "${dir}/gemma3/*.hpp")
    list(APPEND headers ${found})
  endforeach()
  list(SORT headers)
  set(hashes "")
  foreach(header IN LISTS headers)
    file(SHA256 "${header}" hash)
    string(APPEND hashes "${header} ${hash}\n")
  endforeach()
  string(SHA256 stamp "${hashes}${CMAKE_CXX_COMPILER}")

  set(dir "${CMAKE_BINARY_DIR}/gemma3_config_generator")
  set(tool "${dir}/gemma3-generate-config${CMAKE_EXECUTABLE_SUFFIX}")
  set(old_stamp "")
  if(EXISTS "${dir}/stamp" AND EXISTS "${tool}")
    file(READ "${dir}/stamp" old_stamp)
  endif()
  if(NOT old_stamp STREQUAL stamp)
    message(STATUS "gemma3_generate_config: building the config generator")
    file(WRITE "${dir}/main.cpp"
         "#include <gemma3/io/config_header.hpp>\n"
         "int main(int argc, char** argv) { return gemma3::generate_config_main(argc, argv); }\n")
    try_compile(built "${dir}/build"
      SOURCES "${dir}/main.cpp"
      CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${include_dirs}"
      LINK_LIBRARIES ${link_libraries}
      CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF
      OUTPUT_VARIABLE log
      COPY_FILE "${tool}")
    if(NOT built)
      message(FATAL_ERROR "gemma3_generate_config: cannot build the config generator from ${include_dirs}:\n${log}")
    endif()
    file(WRITE "${dir}/stamp" "${stamp}")
  endif()
  set_property(GLOBAL PROPERTY _gemma3_config_generator "${tool}")
  set(${out_var} "${tool}" PARENT_SCOPE)
endfunction()

function(gemma3_generate_config)
  cmake_parse_arguments(ARG "" "NAME;JSON;OUTPUT;NAMESPACE" "" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_JSON OR NOT ARG_OUTPUT)
    message(FATAL_ERROR "gemma3_generate_config: NAME, JSON and OUTPUT are required")
  endif()
  if(NOT ARG_NAMESPACE)
    set(ARG_NAMESPACE "gemma3::configs")
  endif()
  get_filename_component(json_path "${ARG_JSON}" ABSOLUTE)
  get_filename_component(output_path "${ARG_OUTPUT}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${json_path}")
  get_filename_component(output_dir "${output_path}" DIRECTORY)
  file(MAKE_DIRECTORY "${output_dir}")

  _gemma3_config_generator(tool)
  execute_process(
    COMMAND "${tool}" "${json_path}" "${output_path}" "${ARG_NAME}" "${ARG_NAMESPACE}"
    RESULT_VARIABLE status
    OUTPUT_VARIABLE out
    ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "gemma3_generate_config(NAME ${ARG_NAME}) failed:\n${err}")
  elseif(err)
    message(WARNING "gemma3_generate_config(NAME ${ARG_NAME}):\n${err}")
  endif()
endfunction()
