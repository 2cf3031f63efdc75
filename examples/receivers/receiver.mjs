// A webhook receiver for outboxd in Node.js, verifying with the official
// Standard Webhooks library (`standardwebhooks` on npm). An ES module (the
// .mjs name; `import`, no require). Like examples/receiver.rs: it answers
// 200 for a verified webhook (processed, or a duplicate: outboxd delivers at
// least once) and 400 for one that is not signed with the secret; anything
// but 2xx makes outboxd retry.
//
//   npm install standardwebhooks
//   WEBHOOK_SECRET=whsec_... LISTEN_ADDR=127.0.0.1:8080 node examples/receivers/receiver.mjs
//
// Prints one JSON line when it listens ({"listening": "127.0.0.1:8080"};
// port 0 picks a free one) and one per new verified webhook ({"id", "type",
// "data"}). The set of seen ids lives in memory here; a real receiver
// records them in its database, in the transaction that processes the event.

import http from "node:http";
import { Webhook } from "standardwebhooks";

const MAX_BODY = 1024 * 1024;

const webhook = new Webhook(process.env.WEBHOOK_SECRET);
const seen = new Set();

function answer(response, status, text) {
  response.writeHead(status, { "content-type": "text/plain" });
  response.end(`${text}\n`);
}

const server = http.createServer(async (request, response) => {
  if (request.method !== "POST") return answer(response, 405, "POST only");
  const chunks = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > MAX_BODY) return answer(response, 413, "too large");
    chunks.push(chunk);
  }
  // The exact bytes that were signed: verify before parsing.
  const body = Buffer.concat(chunks).toString("utf8");
  let payload;
  try {
    // Checks webhook-signature over webhook-id, webhook-timestamp (within
    // 5 minutes) and the body, then parses the JSON.
    payload = webhook.verify(body, request.headers);
  } catch (error) {
    return answer(response, 400, `invalid: ${error.message}`);
  }
  const id = request.headers["webhook-id"];
  const isNew = !seen.has(id);
  seen.add(id);
  if (isNew) {
    console.log(JSON.stringify({ id, type: payload?.type ?? null, data: payload?.data ?? null }));
  }
  answer(response, 200, isNew ? "ok" : "duplicate");
});

const [host, port] = (process.env.LISTEN_ADDR ?? "127.0.0.1:8080").split(/:(?=\d+$)/);
server.listen(Number(port), host, () => {
  const { address, port: bound } = server.address();
  console.log(JSON.stringify({ listening: `${address}:${bound}` }));
});
