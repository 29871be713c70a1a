// Sends `count` log lines to Sluice through one real Logflare client
// library, configured as its README says, and exits once they are sent.
//
//   node send.mjs <client> <base-url> <api-key> <source-uuid> <count>
//
// Clients: winston-logflare, pino-logflare (its server stream),
// pino-logflare-browser (createPinoBrowserSend, what its browser and edge
// integrations use), loglayer (@loglayer/transport-logflare).

const [client, url, apiKey, source, countText] = process.argv.slice(2);
const count = Number(countText);
const line = (i) => `${client} line ${i}`;

switch (client) {
  case "winston-logflare": {
    const { default: winston } = await import("winston");
    // Its package.json names a main file it does not ship (dist/index.js):
    // the transport is dist/main.js.
    const { default: LogflareTransport } = await import("winston-logflare/dist/main.js");
    const logger = winston.createLogger({
      transports: [new LogflareTransport({ apiKey, sourceToken: source, apiBaseUrl: url })],
    });
    for (let i = 0; i < count; i++) logger.info(line(i), { n: i });
    break;
  }
  case "pino-logflare": {
    const { default: pino } = await import("pino");
    const { createWriteStream } = await import("pino-logflare");
    const stream = createWriteStream({ apiKey, sourceToken: source, apiBaseUrl: url, size: 10 });
    const logger = pino({}, stream);
    for (let i = 0; i < count; i++) logger.info({ n: i }, line(i));
    stream.end();
    break;
  }
  case "pino-logflare-browser": {
    const { createPinoBrowserSend } = await import("pino-logflare");
    const send = createPinoBrowserSend({ apiKey, sourceToken: source, apiBaseUrl: url });
    // What pino's browser build hands to `send` for each log call.
    for (let i = 0; i < count; i++) {
      send("info", { ts: Date.now(), messages: [{ n: i }, line(i)], bindings: [], level: { label: "info", value: 30 } });
    }
    break;
  }
  case "loglayer": {
    const { LogLayer } = await import("loglayer");
    const { LogflareTransport } = await import("@loglayer/transport-logflare");
    const errors = [];
    const logger = new LogLayer({
      transport: new LogflareTransport({
        sourceId: source,
        apiKey,
        url,
        batchSendTimeout: 50,
        onError: (error) => errors.push(error),
      }),
    });
    for (let i = 0; i < count; i++) logger.withMetadata({ n: i }).info(line(i));
    process.on("beforeExit", () => {
      if (errors.length) {
        console.error(String(errors[0]));
        process.exitCode = 1;
      }
    });
    break;
  }
  default:
    console.error(`unknown client ${client}`);
    process.exit(2);
}
