#!/usr/bin/env bash
# The repository root holds only the project's own tree: scratch output belongs under target/ or a
# temp dir. Run by `make test`; lists every stray entry (tracked, or untracked and not ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
allowed=" .ci .git .gitignore Cargo.lock Cargo.toml Makefile README.md LICENSE-APACHE LICENSE-MIT benches docs firmware onnx rig_configs src tests tools "
stray=$(
	{
		git ls-files
		git ls-files --others --exclude-standard
	} | cut -d/ -f1 | sort -u | while read -r top; do
		case "$allowed" in *" $top "*) ;; *) echo "$top" ;; esac
	done
)
if [ -n "$stray" ]; then
	echo "check_root: the repository root holds files that are not the project's (move scratch output under target/ or a temp dir):" >&2
	echo "$stray" | sed 's/^/  /' >&2
	exit 1
fi
echo "check_root: the root holds only the project's tree"
