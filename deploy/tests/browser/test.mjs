// The citizens' page end to end in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded), against the whole system as deploy/up starts it:
//
//   deploy/with-system -- node deploy/tests/browser/test.mjs
//
// A citizen registers, sees the status move (reserved, then confirmed only once the read API
// says so), reloads, cancels and sees the place come back; a wrong PESEL check digit is shown
// next to its field; a lost submission is retried with the same Idempotency-Key; a status link
// opens the registration from its fragment (Polish, phone-sized screen); a rejection is told
// in plain Polish words; a lost link is recovered; a region's waiting room holds a citizen until
// their turn and sends their registration by itself. A screenshot of each step goes to
// $REG_BROWSER_SHOTS (default target/browser-test/). Every wait is on a page condition with a
// deadline.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const INGEST = need("REG_TEST_INGEST_URL");
const READ = need("REG_TEST_READ_URL");
const REGISTRY = need("REG_TEST_REGISTRY_URL");
const ADMIN_TOKEN = process.env.REG_ADMIN_TOKEN || "dev-admin-token";
const SHOTS = path.resolve(process.env.REG_BROWSER_SHOTS || path.join(root, "target/browser-test"));
const CHROMIUM = process.env.REG_CHROMIUM || "/usr/bin/chromium";
const DEADLINE = 60_000; // every wait on the system: generous, it is a deadline not a pace
// deploy/up seeds its demo slots 60 to 62 days ahead in Warsaw's time zone.
const dayAhead = (days) =>
  new Intl.DateTimeFormat("sv-SE", { timeZone: "Europe/Warsaw" }).format(new Date(Date.now() + days * 864e5));
const SLOT = `warszawa-narodowy|${dayAhead(60)}`;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set: run me as deploy/with-system -- node deploy/tests/browser/test.mjs`);
    process.exit(2);
  }
  return v.replace(/\/+$/, "");
}

function assert(condition, message) {
  if (!condition) throw new Error("assertion failed: " + message);
}

// --- PESEL: YYMMDD (month + 20 for 2000-2099), 4 serial digits, check digit (README, the national id rule) ---
function pesel(birthDate, serial) {
  const [y, m, d] = birthDate.split("-").map(Number);
  const month = m + (y >= 2000 ? 20 : 0);
  const digits = `${String(y % 100).padStart(2, "0")}${String(month).padStart(2, "0")}${String(d).padStart(2, "0")}${String(serial).padStart(4, "0")}`;
  const weights = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
  const sum = [...digits].reduce((s, c, i) => s + Number(c) * weights[i], 0);
  return digits + ((10 - (sum % 10)) % 10);
}
assert(pesel("1944-05-14", 135) === "44051401359", "the PESEL generator agrees with the example");
// A serial the registry simulator confirms (its last two digits below 97), or one it rejects.
const confirmedSerial = () => Math.floor(Math.random() * 90) * 100 + Math.floor(Math.random() * 97);
function citizen(birthDate, serial = confirmedSerial()) {
  return { national_id: pesel(birthDate, serial), birth_date: birthDate };
}

// --- browser ---
const profiles = [];
const contexts = [];
async function browser(options) {
  const dir = mkdtempSync(path.join(tmpdir(), "reg-chromium-"));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    ...options,
  });
  contexts.push(context);
  const page = context.pages()[0] || (await context.newPage());
  page.problems = [];
  page.on("console", (m) => {
    if (m.type() === "error" && !/^Failed to load resource/.test(m.text())) page.problems.push(m.text());
  });
  page.on("pageerror", (e) => page.problems.push(String(e)));
  return { context, page };
}

let shot = 0;
const shots = [];
async function step(page, name) {
  const file = path.join(SHOTS, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  shots.push(file);
  console.log(`ok ${shot} ${name}`);
}

const until = (page, fn, arg, what) =>
  page.waitForFunction(fn, arg, { timeout: DEADLINE, polling: 100 }).catch((e) => {
    throw new Error(`waiting for ${what}: ${e.message.split("\n")[0]}`);
  });
const pageStatus = (page, want) =>
  until(page, (w) => document.getElementById("registration").dataset.status === w, want, `the page to show ${want}`);
const remainingOnPage = (page) =>
  page.$eval(`[data-slot="${SLOT}"] .remaining`, (e) => Number(e.dataset.remaining));
const waitRemaining = (page, want) =>
  until(
    page,
    ([slot, w]) => document.querySelector(`[data-slot="${slot}"] .remaining`)?.dataset.remaining === String(w),
    [SLOT, want],
    `${want} places left on the page`,
  );

async function apiStatus(id, token) {
  const r = await fetch(`${READ}/v1/registrations/${id}`, { headers: { Authorization: `Bearer ${token}` } });
  return (await r.json()).status;
}
async function knobs(value) {
  const r = await fetch(`${REGISTRY}/_sim/knobs`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
  assert(r.ok, `registry knobs accepted (${r.status})`);
}

async function queue(settings) {
  const r = await fetch(`${INGEST}/v1/admin/queues/mazowieckie`, {
    method: "PUT",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${ADMIN_TOKEN}` },
    body: JSON.stringify(settings),
  });
  assert(r.ok, `the waiting room's settings accepted (${r.status} ${await r.text()})`);
}

async function fillForm(page, person) {
  await page.fill("#national_id", person.national_id);
  await page.fill("#full_name", person.full_name);
  await page.fill("#birth_date", person.birth_date);
  await page.fill("#email", person.email || "");
  await page.selectOption("#region", "mazowieckie");
  await page.check(`[data-slot="${SLOT}"] input`);
}

async function main() {
  rmSync(SHOTS, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });
  const started = Date.now();

  // 1. The page, in English, on a desktop-sized screen.
  const { context, page } = await browser({ locale: "en-GB", viewport: { width: 1100, height: 900 } });
  const response = await page.goto(INGEST + "/");
  const policy = response.headers()["content-security-policy"] || "";
  assert(policy.includes("script-src 'self'") && !policy.includes("unsafe-inline"), `a strict CSP: ${policy}`);
  assert(policy.includes(new URL(READ).origin), `the CSP lets the page read the read API: ${policy}`);
  await until(page, () => document.body.dataset.ready === "true", null, "the page to start");
  await page.selectOption("#region", "mazowieckie");
  await until(page, (s) => !!document.querySelector(`[data-slot="${s}"] .remaining[data-remaining]`), SLOT, "availability");
  const before = await remainingOnPage(page);
  assert(before > 0, "the demo slot has places");
  assert((await page.getAttribute("html", "lang")) === "en", "English by default for en-GB");
  await step(page, "availability");

  // 2. A wrong check digit: the edge's field error shown next to the field.
  const anna = { ...citizen("1961-02-03"), full_name: "Anna Nowak", email: "anna@example.pl" };
  const wrong = anna.national_id.slice(0, 10) + ((Number(anna.national_id[10]) + 1) % 10);
  await fillForm(page, { ...anna, national_id: wrong });
  await page.click("#submit");
  await until(page, () => document.getElementById("national_id").getAttribute("aria-invalid") === "true", null, "the field error");
  const error = await page.textContent("#national_id-error");
  assert(error.trim().length > 0, "the error has words");
  assert((await page.getAttribute("#national_id", "aria-describedby")).includes("national_id-error"), "the error is tied to its field");
  assert(await page.$eval("#national_id", (e) => e === document.activeElement), "focus moved to the field in error");
  await step(page, "validation-error");

  // 3. The corrected submission; its first answer is lost on the way back, and the page's
  // retry carries the same Idempotency-Key (the edge answers with the first registration).
  // The registry is down for a while: the read API says "reserved", and so does the page,
  // poll after poll, never "confirmed" before the API says so.
  await knobs({ outage: true });
  const posts = [];
  let dropped = false;
  await page.route("**/v1/registrations", async (route) => {
    const request = route.request();
    if (request.method() !== "POST") return route.continue();
    posts.push({ key: request.headers()["idempotency-key"], body: JSON.parse(request.postData()) });
    if (!dropped) {
      dropped = true;
      await route.fetch(); // reaches the edge and is recorded ...
      return route.abort("connectionreset"); // ... but the answer never reaches the page
    }
    return route.continue();
  });
  await page.fill("#national_id", anna.national_id);
  await page.click("#submit");
  await until(page, () => !!document.getElementById("registration").dataset.status && !document.getElementById("registration").hidden, null, "the registration to show");
  await page.unroute("**/v1/registrations");
  assert(posts.length === 2, `one retry after the lost answer (${posts.length} posts)`);
  assert(posts[0].key && posts[0].key === posts[1].key, "the retry reuses the Idempotency-Key");
  assert(posts[1].body.language === "en", "the page's language goes with the submission");
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("reg.registration")));
  assert(stored && stored.id && stored.token, "id and token kept on this device");
  await pageStatus(page, "reserved");
  let polls = 0;
  page.on("response", (r) => { if (r.url().includes(`/v1/registrations/${stored.id}`) && r.request().method() === "GET") polls++; });
  while (polls < 2) await page.waitForEvent("response", { timeout: DEADLINE });
  assert((await apiStatus(stored.id, stored.token)) === "reserved", "the read API says reserved");
  assert((await page.getAttribute("#registration", "data-status")) === "reserved", "and so does the page, poll after poll");
  assert(!(await page.textContent("#status")).includes("Confirmed"), "not confirmed yet");
  await step(page, "reserved");
  await knobs({ outage: false });
  await pageStatus(page, "confirmed");
  assert((await apiStatus(stored.id, stored.token)) === "confirmed", "confirmed on the page only once the API says so");
  assert((await page.textContent("#status")).includes("Confirmed"), "the status in words");
  await waitRemaining(page, before - 1);
  await step(page, "confirmed");

  // 4. A reload keeps the registration.
  await page.reload();
  await pageStatus(page, "confirmed");
  assert((await page.textContent("#status-id")) === stored.id, "the same registration after a reload");
  await step(page, "after-reload");

  // 5. Cancel: the status says so and the place comes back.
  await page.click("#cancel");
  await page.click("#cancel-yes");
  await pageStatus(page, "cancelled");
  assert((await apiStatus(stored.id, stored.token)) === "cancelled", "the API agrees");
  await waitRemaining(page, before);
  await step(page, "cancelled-place-back");

  // 6. Polish, by the language switch: a registration the registry refuses, told in plain words.
  await page.selectOption("#language", "pl");
  await until(page, () => document.documentElement.lang === "pl", null, "Polish");
  await page.click("#again");
  const jan = { ...citizen("1950-07-21", 4197), full_name: "Jan Kowalski", email: "jan@example.pl" };
  await fillForm(page, jan);
  const submitted = page.waitForRequest((r) => r.url().endsWith("/v1/registrations") && r.method() === "POST");
  await page.click("#submit");
  assert(JSON.parse((await submitted).postData()).language === "pl", "the submission in Polish");
  await pageStatus(page, "rejected");
  const told = await page.textContent("#status");
  assert(told.includes("nie zgadzają się z rejestrem"), `data_mismatch in plain Polish: ${told}`);
  await step(page, "rejected-polish");

  // 7. A lost link: always the same answer.
  await page.fill("#recover-national_id", anna.national_id);
  await page.fill("#recover-birth_date", anna.birth_date);
  await page.click("#recover-submit");
  await until(page, () => document.getElementById("recover-result").textContent.length > 0, null, "the recovery answer");
  assert((await page.textContent("#recover-result")).includes("Jeśli rejestracja istnieje"), "the recovery answer in Polish");
  await step(page, "recover");
  assert(page.problems.length === 0, `no script or CSP errors: ${page.problems.join(" | ")}`);
  await context.close();

  // 8. A status link from a message, on a phone, in a browser that prefers Polish and has
  // never seen the registration: opened from the fragment, kept, the fragment taken away.
  const ewa = { ...citizen("2003-11-30"), full_name: "Ewa Zielińska", email: "ewa@example.pl", region: "mazowieckie", location: "warszawa-narodowy", date: dayAhead(61), language: "pl" };
  const accepted = await fetch(`${INGEST}/v1/registrations`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(ewa) });
  assert(accepted.status === 202, `the edge accepts Ewa (${accepted.status})`);
  const { registration_id: id, token } = await accepted.json();
  const phone = await browser({ locale: "pl-PL", viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  await phone.page.goto(`${INGEST}/#registration=${id}&token=${token}`);
  await pageStatus(phone.page, "confirmed");
  assert((await phone.page.evaluate(() => location.hash)) === "", "the fragment is gone from the address bar");
  assert((await phone.page.evaluate(() => JSON.parse(localStorage.getItem("reg.registration")).id)) === id, "the link's registration is kept");
  assert((await phone.page.getAttribute("html", "lang")) === "pl", "Polish from navigator.language");
  assert((await phone.page.textContent("#status")).includes("Potwierdzona"), "confirmed, in Polish");
  assert(await phone.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "nothing wider than the phone");
  await step(phone.page, "status-link-phone-polish");
  assert(phone.page.problems.length === 0, `no script or CSP errors: ${phone.page.problems.join(" | ")}`);
  await phone.context.close();

  // 9. The opening minute: the region's waiting room is on and opens in a few seconds. The
  // page takes a ticket and shows the citizen waiting (in English and Polish), keeps the
  // ticket across a reload, holds a registration sent too early, and sends it by itself,
  // with the ticket, once admitted.
  const opensAt = new Date(Date.now() + 10_000).toISOString();
  await queue({ enabled: true, rate: 5, opens_at: opensAt });
  try {
    const waiting = await browser({ locale: "en-GB", viewport: { width: 1100, height: 900 } });
    const wpage = waiting.page;
    const tickets = [];
    wpage.on("request", (r) => {
      if (r.url().endsWith("/v1/queue") && r.method() === "POST" && JSON.parse(r.postData()).region === "mazowieckie") tickets.push(r);
    });
    await wpage.goto(INGEST + "/");
    await until(wpage, () => document.body.dataset.ready === "true", null, "the page to start");
    await wpage.selectOption("#region", "mazowieckie");
    await until(wpage, () => document.getElementById("queue").dataset.state === "waiting" && !document.getElementById("queue").hidden, null, "the waiting room");
    assert((await wpage.textContent("#queue-text")).includes("waiting room"), "the wait in words");
    const ticket = await wpage.evaluate(() => JSON.parse(localStorage.getItem("reg.ticket")).ticket);
    assert(ticket, "the ticket is kept on this device");
    await step(wpage, "waiting-room");
    await wpage.selectOption("#language", "pl");
    await until(wpage, () => document.getElementById("queue-text").textContent.includes("poczekalni"), null, "the wait in Polish");
    await step(wpage, "waiting-room-polish");
    await wpage.selectOption("#language", "en");
    await wpage.reload();
    await until(wpage, () => document.getElementById("queue").dataset.state === "waiting" && !document.getElementById("queue").hidden, null, "the waiting room after a reload");
    assert((await wpage.evaluate(() => JSON.parse(localStorage.getItem("reg.ticket")).ticket)) === ticket, "the same ticket after a reload");
    assert(tickets.length === 1, `one ticket taken for the region, not one per load (${tickets.length})`);
    // Sent before its turn: held, then sent by itself with the ticket.
    const kasia = { ...citizen("1972-04-09"), full_name: "Katarzyna Wiśniewska", email: "kasia@example.pl" };
    await fillForm(wpage, kasia);
    const sent = [];
    wpage.on("request", (r) => { if (r.url().endsWith("/v1/registrations") && r.method() === "POST") sent.push(r.headers()["waiting-room-ticket"]); });
    await wpage.click("#submit");
    await until(wpage, () => document.getElementById("queue-text").textContent.includes("by itself"), null, "the registration held for its turn");
    await step(wpage, "waiting-room-held");
    assert(Date.now() < Date.parse(opensAt), "held before the opening (the test's clock is not late)");
    await until(wpage, () => !!document.getElementById("registration").dataset.status && !document.getElementById("registration").hidden, null, "the registration sent once admitted");
    assert(sent.length >= 2 && sent[sent.length - 1] === ticket, `the last submission carried the ticket (${sent.length} sent)`);
    assert(Date.now() >= Date.parse(opensAt), "not admitted before the opening");
    assert(await wpage.$eval("#queue", (e) => e.hidden), "the waiting room is gone once registered");
    await step(wpage, "waiting-room-registered");
    assert(wpage.problems.length === 0, `no script or CSP errors: ${wpage.problems.join(" | ")}`);
    await waiting.context.close();
  } finally {
    await queue({ enabled: false, rate: 5 });
  }

  console.log(`browser test passed in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${SHOTS}:`);
  for (const f of shots) console.log("  " + f);
}

try {
  await main();
} catch (e) {
  console.error(e.stack || String(e));
  console.error(`screenshots so far in ${SHOTS}`);
  process.exitCode = 1;
} finally {
  for (const context of contexts) await context.close().catch(() => {});
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
}
