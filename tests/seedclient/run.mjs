// Runs the seed's client classes (seed.ts, verbatim but for the URL) against a real server.
// Usage: node run.mjs <ws base url> <token alice> <token bob> <canvas id>
// Prints one JSON object {ok, steps, alice, bob} on stdout; exits 0 when every step passed.
import fs from "node:fs";
import vm from "node:vm";
import * as esbuild from "esbuild";
import { WebSocket } from "ws";

const [serverUrl, tokenAlice, tokenBob, canvasId] = process.argv.slice(2);
globalThis.WebSocket = WebSocket;
globalThis.SERVER_URL = serverUrl;

function load(file) {
  const source = fs.readFileSync(new URL(file, import.meta.url), "utf8");
  const { code } = esbuild.transformSync(source, { loader: "ts", target: "es2022" });
  vm.runInThisContext(code, { filename: file });
}
load("glue.ts");
load("seed.ts");
const { CollaborativeCanvas, installCanvasGlue } = vm.runInThisContext("({ CollaborativeCanvas, installCanvasGlue })");
installCanvasGlue(CollaborativeCanvas);

const steps = [];
const deadline = setTimeout(() => finish(false, "deadline"), 30000);

async function until(what, predicate, ms = 10000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  steps.push(what);
}
const events = (canvas, kind) => (canvas.events ?? []).filter((e) => e.kind === kind);
const messages = (canvas, type) => events(canvas, "message").map((e) => e.message).filter((m) => m.type === type);

const alice = new CollaborativeCanvas(canvasId, tokenAlice, { id: "alice", name: "Alice" });
const bob = new CollaborativeCanvas(canvasId, tokenBob, { id: "bob", name: "Bob" });
const recorded = ["connection_ack", "subscribed", "error", "heartbeat_ack", "ack", "presence"];
alice.recordMessages(recorded);
bob.recordMessages(recorded);

function finish(ok, error) {
  clearTimeout(deadline);
  for (const canvas of [alice, bob]) canvas.websocket.socket?.close(1000);
  process.stdout.write(JSON.stringify({ ok, error, steps, alice: alice.events, bob: bob.events }) + "\n");
  process.exit(ok ? 0 : 1);
}

try {
  // connect() sends connection_init, then subscribes to the three channels before the ack arrives
  await alice.connect();
  await bob.connect();
  await until("both subscribed to 3 channels", () =>
    messages(alice, "subscribed").length === 3 && messages(bob, "subscribed").length === 3);
  await until("connection_ack gave a sessionId", () =>
    alice.websocket.sessionId && bob.websocket.sessionId && alice.websocket.sessionId !== bob.websocket.sessionId);

  alice.websocket.send({
    id: "add-e1",
    type: "canvas_update",
    data: { canvasId, action: "add", elementId: "e1", properties: { type: "rect", x: 0, y: 0, width: 10, height: 10 } },
  });
  await until("bob's handleCanvasUpdate added e1", () => events(bob, "addElement").some((e) => e.elementId === "e1"));
  await until("alice got a durable ack", () => messages(alice, "ack").some((m) => m.data.messageId === "add-e1"));

  alice.updateElement("e1", { fill: "#ff0000" });
  await until("bob's handleCanvasUpdate updated e1", () =>
    events(bob, "updateElementLocal").some((e) => e.elementId === "e1" && e.properties.fill === "#ff0000"));

  bob.updateElement("e1", { text: "from bob" });
  await until("alice's handleCanvasUpdate updated e1", () =>
    events(alice, "updateElementLocal").some((e) => e.elementId === "e1" && e.properties.text === "from bob"));

  alice.moveCursor(10, 20);
  await until("bob's handleCursorMove saw alice's cursor", () =>
    events(bob, "updateRemoteCursor").some((e) => e.userId === "alice" && e.position.x === 10 && e.position.y === 20));

  alice.websocket.send({ type: "heartbeat", data: { timestamp: new Date().toISOString() } });
  await until("heartbeat answered", () => messages(alice, "heartbeat_ack").length === 1);

  alice.requestAIAssistance("Suggest improvements");
  await until("AI reported unavailable", () => messages(alice, "error").some((m) => m.code === "AI_UNAVAILABLE"));

  alice.websocket.send({ type: "canvas_update", data: { canvasId, action: "delete", elementId: "e1" } });
  await until("bob's handleCanvasUpdate deleted e1", () => events(bob, "deleteElement").some((e) => e.elementId === "e1"));

  finish(true, null);
} catch (error) {
  finish(false, String(error));
}
