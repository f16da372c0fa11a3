// Drive the system Chromium through one page and report what happened, as JSON lines.
//
//   node drive.mjs URL '[{"fill": "#message", "value": "hi"}, {"click": "#send"}, ...]'
//
// Actions run in order; each prints one line {"step": i, "ok": true, ...}. A failing step
// prints {"step": i, "ok": false, "error": "..."} and the script exits 1. Console messages and
// page errors are printed as {"console": ...} / {"pageerror": ...} lines, to debug a failure.
//
//   {"fill": SEL, "value": TEXT}            type TEXT into the input SEL (replaces its value)
//   {"press": SEL, "key": KEY}              press KEY (e.g. "Enter") in SEL
//   {"click": SEL}                          click SEL
//   {"waitFor": SEL, "text": TEXT}          wait until some element SEL contains TEXT
//   {"texts": SEL}                          report the text of every element SEL: {"texts": [...]}
//   {"screenshot": PATH}                    save a PNG of the page
//
// $CHROMIUM_ARGS may add Chromium flags, as a JSON array (e.g. --host-resolver-rules, to make
// a foreign host name reach a loopback server in the security tests).
//
// Only the Chromium at $CHROMIUM (default /usr/bin/chromium) is used: playwright-core never
// downloads a browser. Chromium's background networking is switched off: on a machine without
// network access its connections would otherwise be refused and slow everything down.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, actionsJson] = process.argv.slice(2);
if (!url) {
  console.error("usage: node drive.mjs URL [ACTIONS_JSON]");
  process.exit(2);
}
const actions = JSON.parse(actionsJson || "[]");
const timeout = Number(process.env.DRIVE_TIMEOUT_MS || 10000);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// A fresh profile each run: nothing from an earlier run (cache, storage) can leak in.
const userDataDir = mkdtempSync(join(tmpdir(), "embedws-chromium-"));
let context;
let status = 0;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...JSON.parse(process.env.CHROMIUM_ARGS || "[]"),
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("console", (msg) => emit({ console: msg.text(), level: msg.type() }));
  page.on("pageerror", (err) => emit({ pageerror: String(err) }));
  const response = await page.goto(url);
  emit({ step: "goto", ok: true, url, status: response ? response.status() : null });

  for (const [step, action] of actions.entries()) {
    try {
      const result = await run(page, action);
      emit({ step, ok: true, ...result });
    } catch (err) {
      emit({ step, ok: false, error: String(err && err.message ? err.message : err) });
      status = 1;
      break;
    }
  }
} catch (err) {
  emit({ step: "launch", ok: false, error: String(err && err.message ? err.message : err) });
  status = 1;
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(status);

async function run(page, action) {
  if ("fill" in action) {
    await page.locator(action.fill).fill(action.value);
    return {};
  }
  if ("press" in action) {
    await page.locator(action.press).press(action.key);
    return {};
  }
  if ("click" in action) {
    await page.locator(action.click).click();
    return {};
  }
  if ("waitFor" in action) {
    const locator = page.locator(action.waitFor).filter({ hasText: action.text ?? "" });
    await locator.first().waitFor({ state: "attached" });
    return {};
  }
  if ("texts" in action) {
    return { texts: await page.locator(action.texts).allTextContents() };
  }
  if ("screenshot" in action) {
    await page.screenshot({ path: action.screenshot });
    return {};
  }
  throw new Error(`unknown action ${JSON.stringify(action)}`);
}
