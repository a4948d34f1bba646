#!/usr/bin/env bash
# run.sh - install the build tree into a temporary prefix, then build and run a C
# and a C++ program against the installed headers, uhmm.pc and libuhmm.so.
#
# usage: run.sh CMAKE BUILD_DIR CONFIG VERSION
# env:   CC, CXX (default cc, c++); UHMM_CONSUMER_FLAGS (extra flags, e.g. sanitizers)
# exit:  0 pass, 1 fail, 77 skip (pkg-config or a C compiler missing)
set -euo pipefail

if [ $# -ne 4 ]; then
	echo "usage: $0 CMAKE BUILD_DIR CONFIG VERSION" >&2
	exit 1
fi
cmake_cmd=$1
build_dir=$2
config=$3
version=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cc=${CC:-cc}
cxx=${CXX:-c++}
# shellcheck disable=SC2206 # word splitting of the flags is intended
extra=(${UHMM_CONSUMER_FLAGS:-})

fail() {
	echo "consumer: FAIL: $*" >&2
	exit 1
}
skip() {
	echo "consumer: SKIP: $*"
	exit 77
}

command -v pkg-config >/dev/null || skip "pkg-config not found (Debian: apt-get install pkg-config)"
command -v "$cc" >/dev/null || skip "no C compiler '$cc'"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

echo "consumer: installing $build_dir into $prefix"
"$cmake_cmd" --install "$build_dir" --prefix "$prefix" ${config:+--config "$config"} \
	>"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }

for h in uhmm.h uhmm_driver.h uhmm_sim.h; do
	[ -f "$prefix/include/$h" ] || fail "header include/$h was not installed"
done
[ ! -e "$prefix/include/internal.h" ] || fail "src/internal.h must never be installed"

pc=$(find "$prefix" -name uhmm.pc -path '*/pkgconfig/*' -print -quit)
[ -n "$pc" ] || fail "uhmm.pc was not installed"
export PKG_CONFIG_PATH=${pc%/*}
pkg-config --exists uhmm || fail "pkg-config cannot read $pc"
got=$(pkg-config --modversion uhmm)
[ "$got" = "$version" ] || fail "uhmm.pc says version '$got', the project is '$version'"
pkg-config --static --libs uhmm | grep -q -- '-pthread' || fail "uhmm.pc lacks Libs.private: -pthread"

libdir=$(pkg-config --variable=libdir uhmm)
libdir=$(cd "$libdir" && pwd) || fail "uhmm.pc libdir '$libdir' does not exist"
[ "$libdir" = "$(cd "${pc%/*}/.." && pwd)" ] || fail "uhmm.pc libdir $libdir is not where uhmm.pc lies"
includedir=$(pkg-config --variable=includedir uhmm)
[ "$(cd "$includedir" && pwd)" = "$prefix/include" ] || fail "uhmm.pc includedir is $includedir"
ls "$libdir"/libuhmm.so.0 "$libdir"/libuhmm.a >/dev/null || fail "libraries missing in $libdir"

# shellcheck disable=SC2207
cflags=($(pkg-config --cflags uhmm))
# shellcheck disable=SC2207
libs=($(pkg-config --libs uhmm))
echo "consumer: pkg-config: ${cflags[*]} ${libs[*]}"

# The exported ABI: only uhmm_* symbols, each under the UHMM_0.1 version node.
if command -v nm >/dev/null; then
	# nm of binutils >= 2.37 prints name@@VERSION by default; older ones need the option.
	if nm -D --with-symbol-versions "$libdir/libuhmm.so.0" >/dev/null 2>&1; then
		nm_ver=(nm -D --defined-only --with-symbol-versions)
	else
		nm_ver=(nm -D --defined-only)
	fi
	syms=$("${nm_ver[@]}" "$libdir/libuhmm.so.0" | awk '$2 != "A" { print $3 }')
	[ -n "$syms" ] || fail "libuhmm.so exports nothing"
	bad=$(printf '%s\n' "$syms" | grep -v '^uhmm_[a-z0-9]' || true)
	[ -z "$bad" ] || fail "libuhmm.so exports symbols outside the uhmm_ API:"$'\n'"$bad"
	bad=$(printf '%s\n' "$syms" | grep -v '@@\?UHMM_0\.1$' || true)
	[ -z "$bad" ] || fail "symbols without the UHMM_0.1 version node:"$'\n'"$bad"
	echo "consumer: libuhmm.so exports $(printf '%s\n' "$syms" | wc -l) uhmm_* symbols"
fi
if command -v readelf >/dev/null; then
	readelf -d "$libdir/libuhmm.so.0" | grep -q 'SONAME.*\[libuhmm\.so\.0\]' ||
		fail "libuhmm.so has no SONAME libuhmm.so.0"
fi

build_and_run() { # LANG COMPILER SOURCE STD
	local lang=$1 compiler=$2 source=$3 std=$4 exe=$tmp/consumer_$1
	echo "consumer: $compiler $std (${lang})"
	"$compiler" "$std" -Wall -Wextra -Werror "${extra[@]}" "${cflags[@]}" "$here/$source" \
		-o "$exe" "${libs[@]}" "-Wl,-rpath,$libdir" || fail "$lang consumer does not build"
	if command -v readelf >/dev/null; then
		readelf -d "$exe" | grep -q 'NEEDED.*\[libuhmm\.so\.0\]' ||
			fail "$lang consumer is not linked to libuhmm.so.0"
	fi
	"$exe" || fail "$lang consumer failed"
}

build_and_run c "$cc" consumer.c -std=c11
if command -v "$cxx" >/dev/null; then
	build_and_run cxx "$cxx" consumer.cpp -std=c++11
else
	echo "consumer: c++ compiler '$cxx' not found: skipping the C++ consumer"
fi
echo "consumer: PASS"
