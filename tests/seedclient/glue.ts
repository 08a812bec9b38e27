// Glue for seed.ts: only what the seed's classes use but never define. Not part of the seed.
// Evaluated as a classic script before seed.ts (so these are globals the seed code can see);
// `installCanvasGlue()` runs after seed.ts and adds the CollaborativeCanvas methods the seed
// leaves out ("Additional methods and implementation details..."), recording what they are
// called with so the test can check it. The driver (run.mjs) sets SERVER_URL and WebSocket
// (the `ws` package) on globalThis first.

declare const SERVER_URL: string;

const APP_VERSION = "seed-client-test";

interface User {
  id: string;
  name: string;
}

function generateTraceId(): string {
  let id = "";
  for (let i = 0; i < 32; i++) id += Math.floor(Math.random() * 16).toString(16);
  return id;
}

function installCanvasGlue(canvasClass: any): void {
  const proto = canvasClass.prototype;
  const record = (canvas: any, kind: string, detail: any) => {
    (canvas.events ??= []).push({ kind, ...detail });
  };
  proto.startCursorTracking = function (): void {
    // a browser would listen to pointer moves here; the test calls moveCursor() instead
    this.cursorTracking = true;
  };
  proto.moveCursor = function (x: number, y: number): void {
    this.websocket.send({
      type: "cursor_position",
      timestamp: new Date().toISOString(),
      data: { canvasId: this.canvasId, position: { x, y } },
    });
  };
  proto.getSelectedElementIds = function (): string[] {
    return this.selected ?? [];
  };
  proto.addElement = function (elementId: string, properties: any): void {
    record(this, "addElement", { elementId, properties });
  };
  proto.updateElementLocal = function (elementId: string, properties: any): void {
    record(this, "updateElementLocal", { elementId, properties });
  };
  proto.deleteElement = function (elementId: string): void {
    record(this, "deleteElement", { elementId });
  };
  proto.showUserActivity = function (user: User, action: string): void {
    record(this, "showUserActivity", { user, action });
  };
  proto.updateRemoteCursor = function (userId: string, position: any, user: User): void {
    record(this, "updateRemoteCursor", { userId, position, user });
  };
  proto.showAISuggestions = function (suggestions: any): void {
    record(this, "showAISuggestions", { suggestions });
  };
  // every other message type, through the seed's own MailyWebSocket.on()
  proto.recordMessages = function (types: string[]): void {
    for (const type of types) {
      this.websocket.on(type, (message: any) => record(this, "message", { message }));
    }
  };
}
