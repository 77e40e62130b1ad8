#!/usr/bin/env bash
# Writes the seed corpus, fuzz/seeds/<target>/, from the repository's test
# fixtures and a few hand-made inputs. Checked in; run again after adding
# fixtures. The first byte of a cgroup_file, proc_file or http_request
# input picks the parser (see apptheus/src/fuzzing.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
fx=apptheus/tests/fixtures/cgroup
out=fuzz/seeds
rm -rf "$out"
mkdir -p "$out"/{cgroup_file,proc_file,socket_peer,web_config,http_request,http_headers}

# seed TARGET NAME SELECTOR(octal, or - for none) < content
seed() {
  local file="$out/$1/$2"
  if [ "$3" != - ]; then printf "\\$3" >"$file"; else : >"$file"; fi
  cat >>"$file"
}

# cgroup_file: 0 single number, 1 limit, 2 flat keyed, 3 io.stat,
# 4 blkio (v1), 5 pressure, 6 line count, 7 device, 8 mountinfo,
# 9 controllers.
seed cgroup_file number 0 <"$fx/v2-broken/ctr/pids.current"
seed cgroup_file limit-v2 1 <"$fx/v2-broken/ctr/memory.max"
seed cgroup_file limit-v1 1 <"$fx/v1/memory/slurm/job_7/memory.limit_in_bytes"
seed cgroup_file memory-stat-v1 2 <"$fx/v1/memory/slurm/job_7/apptheus-ctr/memory.stat"
seed cgroup_file memory-stat-v2 2 <"$fx/v2-broken/ctr/memory.stat"
seed cgroup_file cpu-stat 2 <"$fx/hybrid/unified/apptheus/ctr/cpu.stat"
seed cgroup_file io-stat 3 <"$fx/v2-broken/ctr/io.stat"
seed cgroup_file blkio 4 <"$fx/hybrid/blkio/apptheus-ctr/blkio.throttle.io_service_bytes_recursive"
seed cgroup_file pressure 5 <"$fx/hybrid/unified/apptheus/ctr/memory.pressure"
seed cgroup_file procs 6 <"$fx/hybrid/unified/apptheus/ctr/cgroup.procs"
printf '259:0' | seed cgroup_file device 7
seed cgroup_file controllers 11 <"$fx/hybrid/unified/cgroup.controllers"
seed cgroup_file mountinfo 10 <<'MOUNTS'
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
30 29 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 29 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
34 29 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
35 29 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
90 35 0:50 / /home/u/a\040b\011c rw - fuse.sshfs u@h:/ rw,user_id=1000
MOUNTS

# proc_file: 0 environ, 1 /proc/<pid>/cgroup, 2 stat (parent pid),
# 3 children, 4 status (CapEff).
printf 'PATH=/usr/bin\0APPTAINER_CONTAINER=/home/u/img.sif\0APPTAINER_NAME=img.sif\0SLURM_JOB_ID=4242\0SINGULARITY_NAME=old\0X=\001\002y\0' | seed proc_file environ 0
printf '12:memory:/slurm/uid_1000/job_42/step_0\n4:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-3.scope\n0::/user.slice/session-3.scope\n' | seed proc_file cgroup 1
printf '4242 (starter) (x)) S 4241 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n' | seed proc_file stat 2
printf '4243 4250 4251 ' | seed proc_file children 3
printf 'Name:\tapptheus\nUmask:\t0022\nState:\tS (sleeping)\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n' | seed proc_file status 4

# socket_peer: a caller's /proc/<pid>/stat, its command name chosen by it.
printf '4242 (starter) S 4241 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000000 100\n' | seed socket_peer stat -
printf '77 (a) (b) c) R 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n' | seed socket_peer parens -

# web_config
printf '' | seed web_config empty -
seed web_config tls - <<'YAML'
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305]
  prefer_server_cipher_suites: true
  curve_preferences: [X25519, CurveP256]
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prom: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG
YAML
seed web_config inline-pem - <<'YAML'
tls_server_config:
  cert: |
    -----BEGIN CERTIFICATE-----
    MIIBdTCCARugAwIBAgIUeW91IGNhbid0IHRydXN0IHRoaXMwCgYIKoZIzj0EAwIw
    -----END CERTIFICATE-----
  key: |
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg
    -----END PRIVATE KEY-----
YAML
printf 'rate_limit:\n  interval: 1s\n' | seed web_config unsupported -

# http_request: an even first byte serves without authentication, an odd
# one with basic auth (user u, password p) and an extra header.
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n\r\n' | seed http_request prometheus 0
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpw\r\nConnection: close\r\n\r\n' | seed http_request auth 1
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpx\r\n\r\n' | seed http_request auth-wrong 1
printf 'HEAD / HTTP/1.0\r\n\r\nGET /-/ready HTTP/1.1\r\nHost: x\r\n\r\nGET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n' | seed http_request pipelined 0
printf 'POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n' | seed http_request post 0
printf 'GET /nope?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc' | seed http_request not-found 0

# http_headers: Accept and Accept-Encoding values.
printf 'application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1' | seed http_headers accept -
printf 'gzip;q=0, deflate, *;q=0.3' | seed http_headers encoding -
