# Debian packages, made by `cpack -G DEB` in the build directory (tests/packages/clean_root.sh
# builds and installs them in a fresh Debian root):
#   gflex-core    the core, its systemd unit and environment example (and the dashboard,
#                 which serves Debian's Chart.js)
#   gflex-node    a node, its unit and environment example
#   gflex-client  `gflex`: submit, follow and fetch jobs, the demo, the operator's views
#   libgflex-dev  the SDK: libgflex, the public headers, CMake and pkg-config files
# Library dependencies come from dpkg-shlibdeps, so they name the Debian packages the
# programs were linked against. Packages are built from a CPU build (GFLEX_CUDA=OFF): CUDA is
# not in Debian's main archive, and a node with a GPU builds from source against its CUDA.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME gflex)
set(CPACK_PACKAGE_VENDOR GPUFlex)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "GPUFlex packaging <packages@gpuflex.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "GPUFlex: a hybrid GPU cloud for training neural networks")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL core node client dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://gpuflex.invalid/")

set(CPACK_DEBIAN_CORE_PACKAGE_NAME gflex-core)
set(CPACK_COMPONENT_CORE_DESCRIPTION
    "GPUFlex core: coordinates, verifies and bills a GPUFlex cloud\n"
    "Runs as gflex-core.service; serves a web dashboard with --http-listen.")
# The built-in workloads train on Debian's Fashion-MNIST; the dashboard serves Chart.js.
set(CPACK_DEBIAN_CORE_PACKAGE_DEPENDS "dataset-fashion-mnist, libjs-chart.js")
set(CPACK_DEBIAN_CORE_PACKAGE_SECTION net)

set(CPACK_DEBIAN_NODE_PACKAGE_NAME gflex-node)
set(CPACK_COMPONENT_NODE_DESCRIPTION
    "GPUFlex node: lends this machine's compute to a GPUFlex cloud for credits\n"
    "Runs as gflex-node.service; executes models as data with its own kernels.")
set(CPACK_DEBIAN_NODE_PACKAGE_DEPENDS "dataset-fashion-mnist")
set(CPACK_DEBIAN_NODE_PACKAGE_SECTION net)

set(CPACK_DEBIAN_CLIENT_PACKAGE_NAME gflex-client)
set(CPACK_COMPONENT_CLIENT_DESCRIPTION
    "GPUFlex client: submit and follow training jobs, run the in-process demo\n"
    "The gflex command: jobs, data sets, accounts, nodes, the demo.")
set(CPACK_DEBIAN_CLIENT_PACKAGE_DEPENDS "dataset-fashion-mnist")

# The language model's built-in data set is Debian's fortunes.
foreach(part CORE NODE CLIENT)
  set(CPACK_DEBIAN_${part}_PACKAGE_RECOMMENDS fortunes)
endforeach()

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libgflex-dev)
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "GPUFlex SDK: embed the runtime in a C++ trainer\n"
    "libgflex, the headers of <gflex/...>, and its CMake and pkg-config files.")
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)

include(CPack)
