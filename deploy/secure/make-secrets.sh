#!/usr/bin/env bash
# Makes everything docker-compose.secure.yml mounts as secrets, under deploy/secure/secrets/
# (git-ignored): a private CA, server certificates for NATS and PostgreSQL signed by it, random
# passwords and API tokens, the NATS users file, and DATABASE_URL with verify-full TLS.
# Existing files are kept, so running it again changes nothing; delete the folder to rotate.
#
#   deploy/secure/make-secrets.sh && docker compose -f docker-compose.secure.yml up -d
#
# Needs openssl. For production, put your own CA's certificates and your secret store's values
# in the same file names.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
cd secrets

# A random URL- and config-safe secret (hex).
secret() { [ -s "$1" ] || openssl rand -hex 24 > "$1"; }

if [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=telemetry-aggregator CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi

# server_cert NAME HOSTNAME: NAME.crt/NAME.key for HOSTNAME (the compose service name) and
# localhost, signed by the CA.
server_cert() {
  [ -s "$1.crt" ] && return
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
server_cert nats-server nats
server_cert postgres-server postgres

secret postgres_password
secret nats_aggregator_password
secret nats_publisher_password
secret api_token
secret api_read_token

# The aggregator's DATABASE_URL: password from above, TLS verified against our CA.
[ -s database_url ] || printf 'postgres://postgres:%s@postgres:5432/aggregator?sslmode=verify-full&sslrootcert=/run/secrets/ca.crt\n' \
  "$(cat postgres_password)" > database_url

# NATS users: the aggregator may use JetStream fully; the publisher may only publish events
# and look its stream up.
[ -s nats-auth.conf ] || cat > nats-auth.conf <<CONF
authorization {
  users: [
    { user: aggregator, password: "$(cat nats_aggregator_password)" }
    { user: publisher, password: "$(cat nats_publisher_password)",
      permissions: {
        publish: ["events.>", "\$JS.API.INFO", "\$JS.API.STREAM.NAMES", "\$JS.API.STREAM.INFO.*"]
        subscribe: ["_INBOX.>"]
      } }
  ]
}
CONF

# Containers run as other users than you: the folder stays private to you (0700), the files
# in it readable so that the bind-mounted secrets can be read inside the containers.
chmod 0700 .
chmod 0644 -- *
chmod 0600 ca.key   # signs certificates; never mounted
echo "secrets in $(pwd)"
