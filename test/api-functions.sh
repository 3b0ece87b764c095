#!/bin/sh
# SPDX-License-Identifier: MIT
# Print the functions a public header exports: every declaration marked
# PCOPY_API, one name per line, sorted. Used by check_symbols.sh and
# check_man.sh, so adding a PCOPY_API function to the header is all it takes.
#   test/api-functions.sh include/postcopy.h
set -eu
[ $# -eq 1 ] || { echo "usage: $0 HEADER" >&2; exit 2; }
# Strip comments and preprocessor lines (the #define of PCOPY_API itself),
# split what is left at ";", "{" and "}", keep those that start
# with PCOPY_API and print the identifier right before the first '('.
awk '
	{ line = line $0 "\n" }
	END {
		gsub(/\/\*([^*]|\*+[^*\/])*\*+\//, " ", line)
		n = split(line, l, "\n"); code = ""
		for (i = 1; i <= n; i++) {
			sub(/\/\/.*/, "", l[i])
			if (l[i] !~ /^[ \t]*#/) code = code " " l[i]
		}
		n = split(code, decl, /[;{}]/)
		for (i = 1; i <= n; i++) {
			if (decl[i] !~ /^[ \t]*PCOPY_API[ \t]/) continue
			s = decl[i]; sub(/\(.*/, "", s)
			if (match(s, /[A-Za-z_][A-Za-z0-9_]*[ \t]*$/)) {
				s = substr(s, RSTART); sub(/[ \t]+$/, "", s); print s
			}
		}
	}' "$1" | sort -u
