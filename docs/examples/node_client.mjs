// Call the orders service with the token tokend keeps (Node.js 18+: global fetch).
//
//   TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \
//       node node_client.mjs
//
// Prints the answer; exits 1 if the call fails.
import { readFile } from "node:fs/promises";

const TOKEN_FILE = process.env.TOKEN_FILE ?? "/run/tokend/orders";
const ORDERS_URL = process.env.ORDERS_URL ?? "https://orders.example.internal/orders";

// Read the file on every call, never keep the token: tokend replaces the file
// well before the token expires.
async function readToken() {
  return (await readFile(TOKEN_FILE, "ascii")).trim();
}

async function getOrders() {
  return fetch(ORDERS_URL, {
    headers: { Authorization: `Bearer ${await readToken()}` },
    signal: AbortSignal.timeout(10_000),
  });
}

const response = await getOrders();
const body = await response.text();
if (!response.ok) {
  console.error(`${response.status} ${body}`);
  process.exit(1);
}
console.log(body);
