// Browser check of the Rookery dashboard, run by crates/rookery-ops/tests/dashboard.rs.
//
// Env: DASHBOARD_URL (http://ADDR/), NODE_ID (the id the page must show), SCREENSHOT (PNG path),
// CHROMIUM (browser binary, default /usr/bin/chromium), DISCONNECTS (the totals the
// disconnects table must show, e.g. "kick=1,protocol_error=1"; every other reason shows 0).
// Opens the page in headless Chromium, waits for the node id, reads #rps twice 3 s apart
// (it must be a number > 0 that changed), checks the nodes, routes and disconnects tables,
// saves a screenshot. Exits non-zero with a reason on any failure.
import { chromium } from "playwright-core";

const url = process.env.DASHBOARD_URL;
const nodeId = process.env.NODE_ID;
const shot = process.env.SCREENSHOT;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!url || !nodeId || !shot || process.env.DISCONNECTS === undefined) {
  console.error("set DASHBOARD_URL, NODE_ID, SCREENSHOT and DISCONNECTS");
  process.exit(2);
}
const expectedDisconnects = Object.fromEntries(
  process.env.DISCONNECTS.split(",")
    .filter((p) => p)
    .map((p) => {
      const [reason, n] = p.split("=");
      return [reason, Number(n)];
    }),
);
// The reasons the API lists, in its order.
const REASONS = [
  "rate_limit", "slow_client", "protocol_error", "heartbeat_timeout", "handshake_timeout",
  "handshake_refused", "kick", "duplicate_login", "shutdown",
];

// Never hang: the whole check has a deadline.
setTimeout(() => {
  console.error("check.mjs: overall deadline (60 s) exceeded");
  process.exit(3);
}, 60_000).unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(msg) {
  throw new Error(msg);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let code = 0;
const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
const consoleErrors = [];
page.on("console", (m) => {
  if (m.type() === "error") consoleErrors.push(m.text());
});
page.on("pageerror", (e) => consoleErrors.push(String(e)));
try {
  await page.goto(url, { waitUntil: "load", timeout: 15_000 });
  await page.waitForFunction(
    (id) => document.getElementById("node-id")?.textContent === id,
    nodeId,
    { timeout: 15_000 },
  );
  console.log(`node id shown: ${nodeId}`);

  const readRps = async () => {
    const text = (await page.textContent("#rps")).trim();
    const value = Number(text);
    return { text, value };
  };
  // Rates need two polls; wait until #rps holds a positive number.
  await page.waitForFunction(
    () => Number(document.getElementById("rps")?.textContent) > 0,
    null,
    { timeout: 15_000 },
  );
  const first = await readRps();
  await sleep(3000);
  const second = await readRps();
  console.log(`rps: ${first.text} then ${second.text}`);
  if (!(second.value > 0)) fail(`#rps is not > 0: ${second.text}`);
  if (first.text === second.text) fail(`#rps did not change in 3 s: ${first.text}`);

  const sessions = Number((await page.textContent("#sessions")).trim());
  if (!(sessions > 0)) fail(`#sessions shows no sessions: ${sessions}`);
  const nodes = await page.textContent("#nodes");
  if (!nodes.includes(nodeId)) fail(`#nodes does not list ${nodeId}: ${nodes}`);
  const routes = await page.textContent("#routes");
  if (!routes.includes("ops.echo.json")) fail(`#routes does not list ops.echo.json: ${routes}`);
  const p99 = await page.$$eval("#routes tr", (rows) =>
    rows
      .map((r) => Array.from(r.children).map((c) => c.textContent))
      .find((cells) => cells[0] === "ops.echo.json"),
  );
  if (!p99 || !(Number(p99[4]) > 0)) fail(`no p99 for ops.echo.json: ${JSON.stringify(p99)}`);
  const errors = await page.textContent("#errors");
  if (!errors.includes("ROOM-FULL")) fail(`#errors does not show the failed requests: ${errors}`);
  const disconnects = await page.$$eval("#disconnects tr", (rows) =>
    rows.map((r) => Array.from(r.children).map((c) => c.textContent)),
  );
  const shown = disconnects.map((cells) => cells[0]);
  if (JSON.stringify(shown) !== JSON.stringify(REASONS)) {
    fail(`#disconnects lists ${JSON.stringify(shown)}, not ${JSON.stringify(REASONS)}`);
  }
  for (const [reason, rate, total] of disconnects) {
    const want = expectedDisconnects[reason] || 0;
    if (Number(total) !== want) fail(`#disconnects shows ${total} for ${reason}, not ${want}`);
    // A rate once two polls were seen (#rps has one by now).
    if (!(Number(rate) >= 0) || rate.trim() === "") fail(`no rate for ${reason}: ${rate}`);
  }
  console.log(`disconnects: ${disconnects.map((c) => `${c[0]}=${c[2]}`).join(" ")}`);
  if (consoleErrors.length) fail(`console errors: ${consoleErrors.join("; ")}`);
  console.log(`sessions ${sessions}, echo p99 ${p99[4]} ms; all checks passed`);
} catch (e) {
  console.error(`dashboard check failed: ${e.message}`);
  code = 1;
} finally {
  try {
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
  } catch (e) {
    console.error(`screenshot failed: ${e.message}`);
    code = code || 1;
  }
  await browser.close();
}
process.exit(code);
