// Screenshot of the Ray dashboard's Serve view (a React app: wait until it rendered the app).
//
//   npm i --prefix /tmp/pw playwright-core          # once, outside the repo
//   NODE_PATH=/tmp/pw/node_modules node infra/screenshot.js http://127.0.0.1:8265 infra/dashboard.png
//
// The dashboard URL is the one `quorum serve` prints. Uses the system Chromium
// (`apt-get install -y chromium`; CHROMIUM=/path/to/chrome to use another).
// With Ray's token authentication on, RAY_AUTH_TOKEN (or the token file Ray wrote) is sent.
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [dashboard = "http://127.0.0.1:8265", out = "infra/dashboard.png", app = "quorum"] =
  process.argv.slice(2);

function rayToken() {
  if (process.env.RAY_AUTH_TOKEN) return process.env.RAY_AUTH_TOKEN.trim();
  const file = path.join(os.homedir(), ".ray", "auth_token");
  return fs.existsSync(file) ? fs.readFileSync(file, "utf8").trim() : null;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const token = rayToken();
  const context = await browser.newContext({
    viewport: { width: 1600, height: 1000 },
    extraHTTPHeaders: token ? { Authorization: `Bearer ${token}` } : {},
  });
  if (token) {
    const url = new URL(dashboard);
    await context.addCookies([{ name: "ray-authentication-token", value: token,
      domain: url.hostname, path: "/" }]);
  }
  const page = await context.newPage();
  const base = dashboard.replace(/\/$/, "");
  // The Serve view; the application's own page lists its deployments and replicas.
  await page.goto(`${base}/#/serve`, { waitUntil: "networkidle", timeout: 120000 });
  await page.getByText(app, { exact: true }).first().waitFor({ timeout: 120000 });
  await page.getByText("QuorumIngress").first().waitFor({ timeout: 120000 }).catch(() => {});
  await page.waitForTimeout(3000); // let the status chips and the deployments table settle
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out} (${page.url()})`);
  await browser.close();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
