# The SDK a C++ trainer builds against (docs/EMBEDDING.md): one shared library, libgflex,
# holding the runtime, kernels and actors, with the public headers of <gflex/...>. Its
# dependencies (CAF, Cap'n Proto, LMDB, OpenBLAS, libsodium, CUDA...) are linked into it
# privately, so a program that uses it needs only the library and the headers:
#   find_package(gflex 0.2 CONFIG REQUIRED)  target_link_libraries(app PRIVATE gflex::gflex)
# or pkg-config's `gflex`. `cmake --install build --prefix P` installs it with the programs.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

add_library(gflex_sdk SHARED ${PROJECT_SOURCE_DIR}/actors/embed/sdk_library.cpp)
add_library(gflex::gflex ALIAS gflex_sdk)
# Whole archives: every public function is in the library, used by gflex's programs or not.
target_link_libraries(gflex_sdk PRIVATE gflex_actors)
set_property(TARGET gflex_sdk PROPERTY LINK_LIBRARY_OVERRIDE
             "WHOLE_ARCHIVE,gflex_actors,gflex_domain,gflex_kernels,gflex_runtime")
target_include_directories(gflex_sdk INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/runtime/include>
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/kernels/include>
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/actors/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(gflex_sdk INTERFACE cxx_std_20)
target_link_libraries(gflex_sdk INTERFACE Threads::Threads)
set_target_properties(gflex_sdk PROPERTIES
  OUTPUT_NAME gflex
  EXPORT_NAME gflex
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
# Installed, the library and programs keep the directories of the libraries they link that
# are outside the system's (CUDA's), so they run without LD_LIBRARY_PATH.
set_target_properties(gflex_sdk gflex gflex-core gflex-node PROPERTIES
  INSTALL_RPATH_USE_LINK_PATH ON)

# Each file belongs to one of the Debian packages cmake/gflex_packages.cmake makes: dev
# (libgflex-dev), client (gflex-client), core (gflex-core), node (gflex-node).
install(TARGETS gflex_sdk EXPORT gflexTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS gflex RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT client)
install(TARGETS gflex-core RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT core)
install(TARGETS gflex-node RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT node)
# The shipped job specs, for `gflex submit` and `gflex train --spec`: fashion-mlp.toml is the
# reference of every key, and the README's commands name them (/usr/share/gflex/jobs/ once
# packaged).
install(DIRECTORY ${PROJECT_SOURCE_DIR}/apps/jobs/ DESTINATION ${CMAKE_INSTALL_DATADIR}/gflex/jobs
        COMPONENT client FILES_MATCHING PATTERN "*.toml")
# The public headers; <gflex/test_aids.hpp> is for the project's own tests.
foreach(dir runtime kernels actors)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          COMPONENT dev FILES_MATCHING PATTERN "*.hpp" PATTERN "test_aids.hpp" EXCLUDE)
endforeach()
install(EXPORT gflexTargets NAMESPACE gflex::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gflex COMPONENT dev)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/gflexConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/gflexConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gflex)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/gflexConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/gflexConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/gflexConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gflex COMPONENT dev)
file(RELATIVE_PATH GFLEX_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
configure_file(${PROJECT_SOURCE_DIR}/cmake/gflex.pc.in ${CMAKE_CURRENT_BINARY_DIR}/gflex.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/gflex.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT dev)
target_compile_definitions(gflex_sdk PRIVATE GFLEX_VERSION="${PROJECT_VERSION}")

# systemd units for the core and a node, written at install time with the prefix they are
# installed under (`cmake --install build --prefix P` puts P/bin in their ExecStart), and
# examples of their environment files.
foreach(part core node)
  install(CODE "
    set(GFLEX_BINDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}\")
    configure_file(${PROJECT_SOURCE_DIR}/cmake/systemd/gflex-${part}.service.in
                   ${CMAKE_CURRENT_BINARY_DIR}/systemd/gflex-${part}.service @ONLY)
  " COMPONENT ${part})
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/systemd/gflex-${part}.service
          DESTINATION lib/systemd/system COMPONENT ${part})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/systemd/${part}.env.example
          DESTINATION ${CMAKE_INSTALL_DATADIR}/gflex COMPONENT ${part})
endforeach()
