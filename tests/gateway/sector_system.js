// A sector system that is not Python: Node's standard library only. It integrates with refbus through
// nothing but the gateway's HTTP contract (contracts/schema/openapi.json) and Standard Webhooks.
//
//   node sector_system.js <port> <log file>
//   env: WEBHOOK_SECRET (whsec_...), GATEWAY (http://127.0.0.1:<port>), TOKEN, SECTOR,
//        ACT=1 to act as a receiving sector (on a referral: an illegal complete, accept twice, start, complete)
//        DELAY_MS: answer each webhook after this long
//
// Every webhook received is appended to the log file as a JSON line: {kind: "webhook", id, seq, type,
// referral_id, valid}. Every command's answer: {kind: "answer", command, status, code, rule, seq}.
"use strict";
const http = require("http");
const crypto = require("crypto");
const fs = require("fs");

const [port, logFile] = process.argv.slice(2);
const secret = Buffer.from(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
const gateway = process.env.GATEWAY;
const token = process.env.TOKEN;
const sector = process.env.SECTOR;
const act = process.env.ACT === "1";
const delayMs = Number(process.env.DELAY_MS || 0);

function record(line) {
  fs.appendFileSync(logFile, JSON.stringify(line) + "\n");
}

function verify(headers, body) {
  const id = headers["webhook-id"], ts = headers["webhook-timestamp"], given = headers["webhook-signature"] || "";
  if (!id || !ts) return false;
  if (Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false; // replay window
  const expected = "v1," + crypto.createHmac("sha256", secret).update(`${id}.${ts}.`).update(body).digest("base64");
  return given.split(" ").some((g) => g.length === expected.length &&
    crypto.timingSafeEqual(Buffer.from(g), Buffer.from(expected)));
}

async function command(kind, body) {
  const response = await fetch(`${gateway}/v1/${sector}/commands/${kind}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  record({ kind: "answer", command: kind, key: body.idempotency_key, status: response.status, code: answer.code,
           rule: answer.rule, seq: answer.seq });
  return answer;
}

const worked = new Set();
async function work(event) {
  if (worked.has(event.referral_id)) return;  // a repeat delivery (at least once): already handled
  worked.add(event.referral_id);
  const base = { child: event.child, actor: "w0badc0de", referral_id: event.referral_id };
  const rid = event.referral_id;
  await command("complete", { ...base, idempotency_key: `early-complete-${rid}`, outcome: "service_delivered" });
  await command("accept", { ...base, idempotency_key: `accept-${rid}` });
  await command("accept", { ...base, idempotency_key: `accept-${rid}` });  // a retry: applied once
  await command("start", { ...base, idempotency_key: `start-${rid}` });
  await command("complete", { ...base, idempotency_key: `complete-${rid}`, outcome: "service_delivered" });
}

http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const valid = verify(req.headers, body);
    if (!valid) {
      record({ kind: "webhook", valid: false });
      res.writeHead(401).end();
      return;
    }
    const event = JSON.parse(body.toString("utf8"));
    record({ kind: "webhook", valid, id: req.headers["webhook-id"], seq: Number(req.headers["refbus-seq"]),
             type: event.type, child: event.child, referral_id: event.referral_id });
    setTimeout(() => {
      res.writeHead(204).end();
      if (act && event.type === "referral.requested") work(event).catch((e) => record({ kind: "error", error: String(e) }));
    }, delayMs);
  });
}).listen(Number(port), "127.0.0.1", () => record({ kind: "listening", port: Number(port) }));
