// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, with fake
// capture devices and every page's console collected for diagnostics.
import { existsSync } from 'node:fs';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** The team's flags for browsers in tests (no network beyond loopback, no GPU). */
export const CHROMIUM_BASE_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** Fake camera and microphone, no permission prompt. */
export const CHROMIUM_MEDIA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

export function haveChromium(): boolean {
  return existsSync(CHROMIUM_PATH);
}

export interface TestBrowser {
  readonly browser: Browser;
  /** A page in a fresh context; its console and page errors go to logs(). */
  newPage(label?: string): Promise<Page>;
  /** Collected console lines, prefixed with the page label. */
  logs(): string[];
  close(): Promise<void>;
}

export interface LaunchOptions {
  /** Extra Chromium flags (after the base and media flags). */
  args?: string[];
  /** Include the fake media flags (default true). */
  fakeMedia?: boolean;
  /** Keep at most this many console lines (default 5000). */
  maxLogLines?: number;
}

export async function launchChromium(opts: LaunchOptions = {}): Promise<TestBrowser> {
  const args = [...CHROMIUM_BASE_ARGS, ...(opts.fakeMedia === false ? [] : CHROMIUM_MEDIA_ARGS), ...(opts.args ?? [])];
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args, timeout: 60_000 });
  const lines: string[] = [];
  const max = opts.maxLogLines ?? 5000;
  const push = (s: string) => {
    lines.push(s);
    if (lines.length > max) lines.splice(0, lines.length - max);
  };
  const contexts: BrowserContext[] = [];
  let n = 0;
  let closing: Promise<void> | null = null;
  return {
    browser,
    async newPage(label?: string) {
      const name = label ?? `page${++n}`;
      const context = await browser.newContext();
      contexts.push(context);
      const page = await context.newPage();
      page.on('console', (m) => push(`[${name}] ${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => push(`[${name}] pageerror: ${e.message}`));
      page.on('crash', () => push(`[${name}] page crashed`));
      return page;
    },
    logs: () => lines.slice(),
    close() {
      closing ??= (async () => {
        for (const c of contexts) await c.close().catch(() => {});
        await browser.close().catch(() => {});
      })();
      return closing;
    },
  };
}
