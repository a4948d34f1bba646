# Flags for every C target of the project: the library, the tool and the tests.
include_guard(GLOBAL)
include(CheckCCompilerFlag)
include(CheckCSourceCompiles)

# The library is Linux-only and uses GNU interfaces (gettid, mremap flags,
# pthread_setname_np). Defined as empty, the value `#define _GNU_SOURCE` gives,
# so that a source file that also defines it does not trip -Werror with a
# "macro redefined" warning.
add_compile_definitions(_GNU_SOURCE=)

add_compile_options(
	-Wall
	-Wextra
	-Wshadow
	$<$<COMPILE_LANGUAGE:C>:-Wstrict-prototypes>
	$<$<COMPILE_LANGUAGE:C>:-Wmissing-prototypes>
)
if(UHMM_WERROR)
	add_compile_options(-Werror)
endif()

if(UHMM_SANITIZE STREQUAL "")
	set(UHMM_SANITIZE_FLAGS "")
elseif(UHMM_SANITIZE STREQUAL "address")
	set(UHMM_SANITIZE_FLAGS
		-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
elseif(UHMM_SANITIZE STREQUAL "thread")
	set(UHMM_SANITIZE_FLAGS -fsanitize=thread -fno-omit-frame-pointer)
else()
	message(FATAL_ERROR
		"UHMM_SANITIZE='${UHMM_SANITIZE}' is not known: use \"\" (none), "
		"\"address\" (ASan+UBSan) or \"thread\" (TSan).")
endif()

if(UHMM_SANITIZE_FLAGS)
	set(CMAKE_REQUIRED_FLAGS "${UHMM_SANITIZE_FLAGS}")
	string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${CMAKE_REQUIRED_FLAGS}")
	set(CMAKE_REQUIRED_LINK_OPTIONS ${UHMM_SANITIZE_FLAGS})
	check_c_source_compiles("int main(void) { return 0; }" UHMM_SANITIZE_${UHMM_SANITIZE}_WORKS)
	unset(CMAKE_REQUIRED_FLAGS)
	unset(CMAKE_REQUIRED_LINK_OPTIONS)
	if(NOT UHMM_SANITIZE_${UHMM_SANITIZE}_WORKS)
		unset(UHMM_SANITIZE_${UHMM_SANITIZE}_WORKS CACHE)
		message(FATAL_ERROR
			"UHMM_SANITIZE=${UHMM_SANITIZE}: ${CMAKE_C_COMPILER} cannot build and link "
			"with '${UHMM_SANITIZE_FLAGS}'. Install the sanitizer runtime "
			"(Debian: libasan/libubsan/libtsan come with gcc; for clang, libclang-rt-dev).")
	endif()
	add_compile_options(${UHMM_SANITIZE_FLAGS})
	add_link_options(${UHMM_SANITIZE_FLAGS})
endif()

if(UHMM_SANITIZE STREQUAL "thread")
	# GCC 12+ warns that TSan cannot see atomic_thread_fence; that is known, and
	# must not stop a -Werror build.
	check_c_compiler_flag(-Wtsan UHMM_CC_HAS_WTSAN)
	if(UHMM_CC_HAS_WTSAN)
		add_compile_options(-Wno-tsan)
	endif()
endif()
