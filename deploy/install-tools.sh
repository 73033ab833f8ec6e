#!/bin/sh
# Installs, from Debian's packages, the commands that tests/test_deploy.py runs, when they
# are missing: prometheus and promtool (package prometheus), systemd-analyze (package
# systemd). Run by `make tools`; the tests run it too when a command is missing, and skip
# with its message only when apt-get itself refuses.
#
# Installing prometheus would start its service: for the install alone,
# /usr/sbin/policy-rc.d answers 101 ("action forbidden"), as bench/provision.py does. A
# policy-rc.d that was already there is put back byte for byte (content and mode); one
# that was not is removed again.
set -eu

missing=""
need() { # command package
	if ! command -v "$1" >/dev/null 2>&1; then
		case " $missing " in *" $2 "*) ;; *) missing="$missing $2" ;; esac
	fi
}
need prometheus prometheus
need promtool prometheus
need systemd-analyze systemd
[ -n "$missing" ] || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-tools: no apt-get here to install:$missing" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-tools: apt-get needs root to install:$missing" >&2
	exit 1
fi

policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
	saved=$(mktemp)
	cp -p "$policy" "$saved"
fi
restore() {
	if [ -n "$saved" ]; then
		cp -p "$saved" "$policy"
		rm -f "$saved"
	else
		rm -f "$policy"
	fi
}
trap restore EXIT
trap 'exit 130' INT TERM
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"

log=$(mktemp)
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	--no-install-recommends $missing; } >"$log" 2>&1; then
	echo "install-tools: apt-get refused to install:$missing" >&2
	tail -n 20 "$log" >&2
	rm -f "$log"
	exit 1
fi
rm -f "$log"
