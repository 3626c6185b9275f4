#!/usr/bin/env bash
# install.sh: join this Debian/Ubuntu machine (amd64 or arm64) to a wasmlet
# cluster as a node.
#
#   sudo ./install.sh --master https://MASTER:7070 --token wasmlet-join:... [--deb FILE] [--name NODE] [--timeout SECONDS]
#
# It installs the wasmlet-agent package (--deb FILE, else the newest
# wasmlet-agent_*_<arch>.deb next to this script), writes the master's URL and
# the join token into /etc/default/wasmlet-agent (0600), enables and starts the
# wasmlet-agent service, and waits until the master reports the node Ready.
# Running it again changes nothing that is already in place. `--help` says more.
#
# Exit codes: 0 the node is Ready; 1 something failed (the message says what);
# 2 bad arguments.
#
# Test hook: WASMLET_INSTALL_ROOT (default empty) is put in front of every path
# this script reads or writes (/etc/default/wasmlet-agent, /var/lib/wasmlet/...),
# and when it is set the script does not insist on running as root. Together
# with shims for dpkg, dpkg-deb, dpkg-query, apt-get, systemctl, journalctl and
# curl put first on PATH (the script calls them through PATH only), it lets a
# test run the whole script without touching the machine. Leave it unset on a
# real machine.

set -euo pipefail

readonly PACKAGE=wasmlet-agent
readonly UNIT=wasmlet-agent
readonly ROOT=${WASMLET_INSTALL_ROOT:-}
readonly DEFAULT_FILE=$ROOT/etc/default/wasmlet-agent
readonly STATE_DIR=$ROOT/var/lib/wasmlet
readonly CREDENTIAL=$STATE_DIR/credential.json
PROGRAM=${0##*/}
readonly PROGRAM

usage() {
    cat <<EOF
Usage: $PROGRAM --master URL --token TOKEN [--deb FILE] [--name NODE] [--timeout SECONDS]

Joins this Debian/Ubuntu machine (amd64 or arm64) to a wasmlet cluster as a
node: installs the wasmlet-agent package, writes /etc/default/wasmlet-agent,
enables and starts the wasmlet-agent service, and waits until the master
reports the node Ready. Run it as root. Running it again changes nothing that
is already in place.

  --master URL        the master, https://HOST:7070 (the agent refuses plain http://)
  --token TOKEN       a join token, wasmlet-join:<64 hex digits>:<id>.<secret>
                      (\`wasmlet-master token create --ttl 1h\` on the master makes one)
  --deb FILE          the wasmlet-agent .deb to install (default: the newest
                      wasmlet-agent_*_<arch>.deb in this script's directory)
  --name NODE         the node's name (default: the agent's, this machine's hostname)
  --timeout SECONDS   how long to wait for the node to be Ready (default: 120)
  -h, --help          this text

On success it prints one line: node NAME is Ready in URL.
Exit codes: 0 Ready, 1 failure (the message says what failed), 2 bad arguments.
EOF
}

say() { printf '%s: %s\n' "$PROGRAM" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROGRAM" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s\n\n' "$PROGRAM" "$*" >&2
    usage >&2
    exit 2
}

# ---------------------------------------------------------------- arguments

master="" token="" deb="" name="" timeout=120 timeout_given=""
set_option() {
    local option=$1 value=$2 current
    case $option in
        --master) current=$master ;;
        --token) current=$token ;;
        --deb) current=$deb ;;
        --name) current=$name ;;
        --timeout) current=$timeout_given ;;
    esac
    [ -z "$current" ] || usage_error "$option is given twice"
    [ -n "$value" ] || usage_error "$option needs a value"
    case $option in
        --master) master=$value ;;
        --token) token=$value ;;
        --deb) deb=$value ;;
        --name) name=$value ;;
        --timeout) timeout=$value timeout_given=$value ;;
    esac
}

while [ $# -gt 0 ]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --master | --token | --deb | --name | --timeout)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            set_option "$1" "$2"
            shift 2
            ;;
        --master=* | --token=* | --deb=* | --name=* | --timeout=*)
            set_option "${1%%=*}" "${1#*=}"
            shift
            ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[ -n "$master" ] || usage_error "--master URL is required"
[ -n "$token" ] || usage_error "--token TOKEN is required"

case $master in
    http://*) usage_error "--master $master is plain HTTP: the agent refuses it (the join token and the node's credential would cross the network readable); use the master's https:// URL" ;;
esac
url_pattern='^https://[]A-Za-z0-9._~%:[-]+(/[^?#[:space:]]*)?$' # host[:port] or [v6]:port, then a path
if ! [[ $master =~ $url_pattern ]]; then
    usage_error "--master $master is not an https:// URL like https://master.example:7070"
fi
# The agent drops trailing slashes too, and keeps the URL so in its credential.
while [ "${master%/}" != "$master" ]; do master=${master%/}; done

# The token is a secret: say what is wrong with it, never echo it.
if ! [[ $token =~ ^wasmlet-join:[0-9a-fA-F]{64}:[a-z0-9]{6}\.[a-z0-9]{32}$ ]]; then
    usage_error "--token is not a join token: join tokens look like wasmlet-join:<64 hex digits>:<6 lowercase letters and digits>.<32 lowercase letters and digits> (\`wasmlet-master join-command\` on the master prints the first one; \`wasmlet-master token create\` makes more)"
fi

if [ -n "$name" ] && ! [[ $name =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; then
    usage_error "--name $name is not a valid node name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
fi

timeout=${timeout%s}
if ! [[ $timeout =~ ^[1-9][0-9]{0,5}$ ]]; then
    usage_error "--timeout $timeout_given is not a number of seconds (like 120)"
fi

# ---------------------------------------------------------------- the machine

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "this installs a package and a system service: run it as root (sudo $0 ...)"
fi

for tool in dpkg dpkg-deb dpkg-query systemctl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed: this script is for Debian and Ubuntu machines with systemd"
done

arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"
case $arch in
    amd64 | arm64) ;;
    *) die "this machine's architecture is $arch: wasmlet-agent is packaged for amd64 and arm64 only" ;;
esac

# A value of a JSON object whose string values hold no quotes (the agent's
# credential.json, pretty or compact): json_string FIELD < FILE.
json_string() {
    tr -d '\n' | grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" | head -n 1 | sed 's/^.*:[[:space:]]*"\(.*\)"$/\1/' || true
}

# Joined before? A credential is bound to its master and its node name; the
# agent would present it to another master (refused) or refuse to start under
# another name. Stop here, before changing anything.
credential_master="" credential_node=""
if [ -f "$CREDENTIAL" ]; then
    credential_master=$(json_string master <"$CREDENTIAL")
    credential_node=$(json_string node <"$CREDENTIAL")
    [ -n "$credential_master" ] || die "$CREDENTIAL names no master: the agent cannot use it either. Delete it and run this again"
    if [ "$credential_master" != "$master" ]; then
        die "this machine joined $credential_master before ($CREDENTIAL); that credential is not valid for $master. To join $master instead: systemctl stop $UNIT, delete $CREDENTIAL, and run this again"
    fi
    if [ -n "$name" ] && [ -n "$credential_node" ] && [ "$credential_node" != "$name" ]; then
        die "this machine joined $master before as node $credential_node ($CREDENTIAL); the agent will not start as $name with it. Keep --name $credential_node, or: systemctl stop $UNIT, delete $CREDENTIAL, and run this again"
    fi
fi

# ---------------------------------------------------------------- 1. the package

# deb_fields FILE: sets deb_package, deb_arch, deb_version, or fails naming the file.
deb_fields() {
    local fields
    fields=$(dpkg-deb -f "$1" Package Architecture Version 2>/dev/null) || die "$1 is not a Debian package (dpkg-deb cannot read it)"
    deb_package=$(printf '%s\n' "$fields" | sed -n 's/^Package:[[:space:]]*//p')
    deb_arch=$(printf '%s\n' "$fields" | sed -n 's/^Architecture:[[:space:]]*//p')
    deb_version=$(printf '%s\n' "$fields" | sed -n 's/^Version:[[:space:]]*//p')
}

if [ -n "$deb" ]; then
    [ -f "$deb" ] || die "--deb $deb: no such file"
else
    script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    newest_version=""
    for candidate in "$script_dir"/"$PACKAGE"_*_"$arch".deb; do
        [ -f "$candidate" ] || continue
        deb_fields "$candidate"
        if [ -z "$newest_version" ] || dpkg --compare-versions "$deb_version" gt "$newest_version"; then
            deb=$candidate newest_version=$deb_version
        fi
    done
    [ -n "$deb" ] || die "no ${PACKAGE}_*_$arch.deb in $script_dir: pass the package with --deb FILE"
fi
deb=$(readlink -f "$deb")
deb_fields "$deb"
[ "$deb_package" = "$PACKAGE" ] || die "$deb is the package ${deb_package:-(unnamed)}, not $PACKAGE"
if [ "$deb_arch" != "$arch" ]; then
    die "$deb is $PACKAGE for $deb_arch, but this machine is $arch: use ${PACKAGE}_${deb_version}_$arch.deb"
fi
[ -n "$deb_version" ] || die "$deb has no Version"

installed_version() {
    # Only a fully installed package counts (not one removed with its config left, nor half-configured).
    local state
    state=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$PACKAGE" 2>/dev/null) || return 0
    case $state in
        "installed "*) printf '%s\n' "${state#installed }" ;;
    esac
}

package_changed=""
current_version=$(installed_version)
if [ "$current_version" = "$deb_version" ]; then
    say "$PACKAGE $deb_version is already installed"
else
    if [ -n "$current_version" ]; then
        say "replacing $PACKAGE $current_version with $deb_version from $deb"
    else
        say "installing $PACKAGE $deb_version from $deb"
    fi
    # Keep a configured /etc/default/wasmlet-agent (a conffile) on upgrades, without asking.
    export DEBIAN_FRONTEND=noninteractive
    if command -v apt-get >/dev/null 2>&1 &&
        apt-get install -y --allow-downgrades -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$deb" >&2; then
        :
    else
        say "apt-get could not install it; trying dpkg -i (its dependencies must be installed already)"
        dpkg --force-confdef --force-confold -i "$deb" >&2 || die "installing $deb failed: dpkg -i says why above"
    fi
    current_version=$(installed_version)
    [ "$current_version" = "$deb_version" ] || die "after installing $deb, dpkg reports $PACKAGE ${current_version:-not installed}, not $deb_version"
    package_changed=yes
fi

if ! command -v curl >/dev/null 2>&1; then
    say "curl is needed to ask the master about the node: installing it"
    apt-get install -y curl >&2 || die "curl is not installed and apt-get could not install it"
fi

# ---------------------------------------------------------------- 2. the settings

content="# wasmlet-agent settings, written by install.sh. WASMLET_* variables override
# /etc/wasmlet/agent.toml (every key there is one, see \`wasmlet-agent --help\`).
# The join token is used only until the node has joined: its credential is
# then kept in /var/lib/wasmlet/credential.json.
WASMLET_MASTER=$master
WASMLET_JOIN_TOKEN=$token"
if [ -n "$name" ]; then
    content+="
WASMLET_NAME=$name"
fi

tmp_files=()
cleanup() { [ ${#tmp_files[@]} -eq 0 ] || rm -f "${tmp_files[@]}"; }
trap cleanup EXIT

without_token() { grep -v '^WASMLET_JOIN_TOKEN=' || true; }

config_changed="" token_only=""
if [ -f "$DEFAULT_FILE" ] && [ "$(cat "$DEFAULT_FILE")" = "$content" ]; then
    say "$DEFAULT_FILE is up to date"
    if [ "$(stat -c %a "$DEFAULT_FILE")" != 600 ]; then
        chmod 600 "$DEFAULT_FILE"
        say "$DEFAULT_FILE holds a secret: made it readable by root only (0600)"
    fi
else
    if [ -f "$DEFAULT_FILE" ] && [ "$(without_token <"$DEFAULT_FILE")" = "$(printf '%s\n' "$content" | without_token)" ]; then
        token_only=yes
    fi
    mkdir -p "$(dirname "$DEFAULT_FILE")"
    tmp=$(umask 077 && mktemp "$DEFAULT_FILE.XXXXXX")
    tmp_files+=("$tmp")
    printf '%s\n' "$content" >"$tmp"
    chmod 600 "$tmp"
    [ -n "$ROOT" ] || chown root:root "$tmp"
    mv -f "$tmp" "$DEFAULT_FILE"
    say "wrote $DEFAULT_FILE"
    config_changed=yes
fi
if [ -n "$config_changed" ] && [ -n "$token_only" ] && [ -n "$credential_master" ]; then
    say "this node joined $master before ($CREDENTIAL): the new join token is not needed, and the agent is not restarted for it"
    config_changed=""
fi

# ---------------------------------------------------------------- 3. the service

if ! systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then
    systemctl enable --quiet "$UNIT" || die "systemctl enable $UNIT failed (is systemd running?)"
    say "enabled $UNIT"
fi

# The agent's log lines, ANSI colours and the tracing prefix (time, level,
# module) removed: journal_lines current|any. `current` keeps to the service's
# present run when systemd tells which it is.
journal_lines() {
    command -v journalctl >/dev/null 2>&1 || return 0
    local invocation="" match=()
    if [ "$1" = current ]; then
        invocation=$(systemctl show -p InvocationID --value "$UNIT" 2>/dev/null || true)
        [ -z "$invocation" ] || match=("_SYSTEMD_INVOCATION_ID=$invocation")
    fi
    # --all: the lines hold colour codes, which journalctl would otherwise show as "[blob data]".
    { journalctl -u "$UNIT" -n 50 --no-pager --all -o cat "${match[@]}" 2>/dev/null || true; } |
        sed -E -e 's/\x1b\[[0-9;]*[A-Za-z]//g' \
            -e 's/^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z? +(TRACE|DEBUG|INFO|WARN|ERROR) +[A-Za-z0-9_:]+(\{[^}]*\})?: //' \
            -e 's/ retry_in=[^ ]*$//'
}
# The last line saying what went wrong, if any.
last_complaint() { journal_lines "$1" | grep -Ei 'refused|cannot|error' | tail -n 1 || true; }

fail_not_active() {
    local status essentials
    status=$(systemctl status "$UNIT" --no-pager --lines=0 2>&1 || true)
    essentials=$(printf '%s\n' "$status" | grep -E '^[[:space:]]*(Loaded|Active|Process|Main PID):' | sed -E 's/^[[:space:]]+/  /' || true)
    {
        printf '%s: error: the %s service is not running (%s)\n' "$PROGRAM" "$UNIT" "$1"
        [ -z "$essentials" ] || printf '%s\n' "$essentials"
        local complaint
        complaint=$(last_complaint any)
        [ -z "$complaint" ] || printf "  the agent's last complaint: %s\n" "$complaint"
        printf '  more: systemctl status %s; journalctl -u %s\n' "$UNIT" "$UNIT"
    } >&2
    exit 1
}

if systemctl is-active --quiet "$UNIT"; then
    if [ -n "$package_changed" ] || [ -n "$config_changed" ]; then
        what="its package"
        [ -z "$config_changed" ] || what="${package_changed:+its package and }its settings"
        systemctl restart "$UNIT" || fail_not_active "systemctl restart failed"
        say "restarted $UNIT: $what changed"
    else
        say "$UNIT is already running"
    fi
else
    systemctl start "$UNIT" || fail_not_active "systemctl start failed"
    say "started $UNIT"
fi

# ---------------------------------------------------------------- 4. Ready in the master

ca_file=$(mktemp)
tmp_files+=("$ca_file")
deadline=$((SECONDS + timeout))
observed="the agent has not registered with the master yet (no $CREDENTIAL)"
say "waiting up to ${timeout} s for the node to be Ready in $master"
while :; do
    systemctl is-active --quiet "$UNIT" || fail_not_active "it stopped while joining"
    if [ -f "$CREDENTIAL" ]; then
        credential=$(cat "$CREDENTIAL")
        node=$(json_string node <<<"$credential")
        node_token=$(json_string token <<<"$credential")
        # The PEM is kept with its newlines escaped.
        json_string caCertificate <<<"$credential" | sed 's/\\n/\n/g' >"$ca_file"
        # The credential goes to curl on stdin, not on its command line (which any local user can read).
        answer=$(printf 'header = "Authorization: Bearer %s"\n' "$node_token" |
            curl -sS --max-time 10 --cacert "$ca_file" -K - -w '\n%{http_code}' "$master/api/v1/nodes/$node" 2>&1) || true
        code=${answer##*$'\n'}
        body=${answer%$'\n'*}
        if [ "$code" = 200 ]; then
            flat=$(printf '%s' "$body" | tr -d '\n\r\t ')
            ready=$(printf '%s' "$flat" | grep -o '{"type":"Ready","status":"[A-Za-z]*"' | head -n 1 | sed 's/.*"status":"\([A-Za-z]*\)"/\1/' || true)
            if [ "$ready" = True ]; then
                printf 'node %s is Ready in %s\n' "$node" "$master"
                exit 0
            fi
            reason=$(printf '%s' "$body" | tr -d '\n' | grep -o '{"type":"Ready","status":"[A-Za-z]*","reason":"[^"]*","message":"[^"]*"' | head -n 1 |
                sed 's/.*"reason":"\([^"]*\)","message":"\([^"]*\)"/\1: \2/' || true)
            observed="the master reports node $node Ready=${ready:-absent}${reason:+ ($reason)}"
        elif [[ $code =~ ^[0-9]{3}$ ]] && [ "$code" != 000 ]; then
            observed="GET $master/api/v1/nodes/$node with the node's credential answered $code: $(printf '%s' "$body" | head -c 300)"
        else
            observed="cannot reach the master with the node's credential: $(printf '%s' "$answer" | grep -v '^000$' | head -n 1)"
        fi
    fi
    # Refusals the agent only retries: waiting longer would not help.
    fatal=$(journal_lines current | grep -E "refused the join token|refused this node's credential|refused to register node|does not hold the cluster CA|sent a CA other than" | tail -n 1 || true)
    # A wrong CA comes wrapped in the connection error: keep what says it.
    fatal=$(printf '%s' "$fatal" | sed "s/^.*\(the master's certificate chain does not hold\)/\1/")
    [ -z "$fatal" ] || die "the node cannot join $master: $fatal"
    if [ "$SECONDS" -ge "$deadline" ]; then
        complaint=$(last_complaint current)
        [ -z "$complaint" ] || observed="$observed; the agent's last complaint: $complaint"
        die "timed out after ${timeout} s waiting for the node to be Ready in $master: $observed"
    fi
    sleep 1
done
