# uhmm.pc, generated from uhmm.pc.in and installed to <libdir>/pkgconfig.
#
# The paths in it are relative to the .pc file itself (${pcfiledir}) whenever the
# install dirs are relative, so the file stays right for
# `cmake --install build --prefix /elsewhere` and for DESTDIR staging.
include_guard(GLOBAL)

set(UHMM_PC_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig")

if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
	set(UHMM_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
	set(UHMM_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
	set(UHMM_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
	# lib/pkgconfig -> ../.., lib/x86_64-linux-gnu/pkgconfig -> ../../..
	file(RELATIVE_PATH _uhmm_pc_up "/uhmm-prefix/${UHMM_PC_INSTALL_DIR}" "/uhmm-prefix")
	string(REGEX REPLACE "/$" "" _uhmm_pc_up "${_uhmm_pc_up}")
	set(UHMM_PC_PREFIX "\${pcfiledir}/${_uhmm_pc_up}")
	set(UHMM_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
	set(UHMM_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

configure_file("${PROJECT_SOURCE_DIR}/uhmm.pc.in" "${PROJECT_BINARY_DIR}/uhmm.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/uhmm.pc" DESTINATION "${UHMM_PC_INSTALL_DIR}")
