// Drives the reference kitchen screen (web/kitchen/) in Debian's Chromium through the real edge,
// as a cook would use it, and prints what it saw as one JSON line. Run by
// tests/e2e/test_kitchen_screen.py, which passes the stack through the environment:
//   EDGE_URL, PAIRING_CODE, STAFF_TOKEN, MANAGER_TOKEN, MENU_ITEM_ID, RESTAURANT_ID
// (and NODE_EXTRA_CA_CERTS=<the dev CA> for this script's own API calls).
import { chromium } from "playwright-core";

const env = process.env;
const seen = {};
const api = async (token, method, path, body) => {
  const response = await fetch(env.EDGE_URL + path, {
    method, headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const parsed = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(parsed)}`);
  return parsed;
};
const sentOrder = async (request) => {
  const order = await api(env.STAFF_TOKEN, "POST", "/api/v1/orders", {
    restaurant_id: env.RESTAURANT_ID, request_id: request, order_type: "TAKEAWAY",
    lines: [{ menu_item_id: env.MENU_ITEM_ID, quantity: 2, notes: "no onions" }] });
  return api(env.STAFF_TOKEN, "POST", `/api/v1/orders/${order.id}/status`,
    { status: "SENT_TO_KITCHEN", version: order.version });
};

const browser = await chromium.launch({ executablePath: env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"] });
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  seen.console = [];
  page.on("console", (message) => seen.console.push(message.text()));
  page.on("pageerror", (error) => seen.console.push(String(error)));
  await page.goto(env.EDGE_URL + "/kitchen/");
  await page.waitForSelector("#pairing:not([hidden])");

  // A wrong code: the screen says why.
  await page.fill("#code", "ABCD-EFGH");
  await page.click("#pairing button");
  await page.waitForSelector("#notice:not([hidden])");
  seen.refusal = await page.textContent("#notice");

  // The right code: paired, live.
  await page.fill("#code", env.PAIRING_CODE);
  await page.click("#pairing button");
  await page.waitForSelector('#connection[data-state="live"]');
  seen.title = await page.textContent("#title");

  // An order curled in appears live; bumping it moves it through the API.
  const first = await sentOrder("browser-1");
  const ticket = `[data-order-id="${first.id}"]`;
  await page.waitForSelector(ticket);
  seen.ticket = await page.textContent(ticket);
  await page.click(`${ticket} button`);
  await page.waitForSelector(`${ticket}[data-status="PREPARING"]`);
  seen.bumped = (await api(env.STAFF_TOKEN, "GET", `/api/v1/orders/${first.id}`)).status;

  // A network drop: offline, the socket goes; an order arrives meanwhile; back online the screen
  // resumes from its last event id and shows it.
  const before = await page.evaluate(() => window.kitchen.connections);
  seen.lastBeforeDrop = await page.evaluate(() => window.kitchen.lastEventId);
  await context.setOffline(true);
  await page.evaluate(() => window.kitchen.socket.close());
  const missed = await sentOrder("browser-2");
  await context.setOffline(false);
  await page.waitForFunction((n) => window.kitchen.connections > n, before, { timeout: 20000 });
  await page.waitForSelector(`[data-order-id="${missed.id}"]`, { timeout: 20000 });
  seen.resumedFrom = await page.evaluate(() => window.kitchen.resumedFrom);

  // Revoked by a manager: the screen says so and asks to be paired again.
  const device = (await api(env.MANAGER_TOKEN, "GET", "/api/v1/devices")).devices
    .find((d) => d.device_type === "KITCHEN_SCREEN");
  await api(env.MANAGER_TOKEN, "DELETE", `/api/v1/devices/${device.id}`);
  await page.waitForSelector("#pairing:not([hidden])");
  seen.revoked = await page.textContent("#notice");
  seen.tickets_after_revoke = await page.locator(".ticket").count();
} catch (error) {
  seen.error = String(error && error.stack || error);
  try {
    const page = browser.contexts()[0].pages()[0];
    seen.notice = await page.textContent("#notice");
    seen.connection = await page.textContent("#connection");
  } catch (ignored) { /* the page is gone */ }
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
