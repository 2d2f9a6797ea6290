#!/bin/sh
# Call the orders service with the token tokend keeps in $TOKEN_FILE.
#
#   TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \
#       sh curl.sh
#
# Prints the answer; exits non-zero if the call fails (curl 7.76+ for
# --fail-with-body).
set -eu

TOKEN_FILE=${TOKEN_FILE:-/run/tokend/orders}
ORDERS_URL=${ORDERS_URL:-https://orders.example.internal/orders}

# Read the file on every call: tokend replaces it well before the token expires.
token=$(cat "$TOKEN_FILE")
# printf is a shell builtin, and curl reads the header from stdin (-H @-), so the
# token never shows in the process list as a command-line argument would.
printf 'Authorization: Bearer %s\n' "$token" |
    curl --silent --show-error --fail-with-body --max-time 10 \
        --header @- "$ORDERS_URL"
echo
