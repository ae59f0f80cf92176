/**
 * Firefox ESR profile preferences for the real-browser harness: no phoning home (telemetry,
 * updates, safe browsing, captive portal / connectivity checks, remote settings, add-on
 * updates, prefetch), fake media without permission prompts, WebRTC over loopback, and
 * the DTLS version cap.
 */
export type DtlsVersion = '1.2' | '1.3';

export function firefoxUserJs(opts: { dtls: DtlsVersion; settingsServer: string }): string {
  const prefs: Record<string, string | number | boolean> = {
    // Telemetry / data reporting
    'toolkit.telemetry.enabled': false,
    'toolkit.telemetry.unified': false,
    'toolkit.telemetry.archive.enabled': false,
    'toolkit.telemetry.server': '',
    'toolkit.telemetry.updatePing.enabled': false,
    'toolkit.telemetry.shutdownPingSender.enabled': false,
    'toolkit.telemetry.firstShutdownPing.enabled': false,
    'toolkit.telemetry.newProfilePing.enabled': false,
    'toolkit.telemetry.bhrPing.enabled': false,
    'datareporting.healthreport.uploadEnabled': false,
    'datareporting.policy.dataSubmissionEnabled': false,
    'datareporting.policy.firstRunURL': '',
    // Glean's usage-reporting ping (Firefox 136+; follows_collection_enabled: false, so the
    // telemetry prefs above do not stop it): ~1 s after start ESR 153 resolved
    // incoming.telemetry.mozilla.org through the host's resolver, on lo inside the netns, and
    // that DNS flow landed in the capture.
    'datareporting.usage.uploadEnabled': false,
    'browser.ping-centre.telemetry': false,
    'app.normandy.enabled': false,
    'app.normandy.api_url': '',
    'app.shield.optoutstudies.enabled': false,
    'breakpad.reportURL': '',
    'browser.tabs.crashReporting.sendReport': false,
    'browser.crashReports.unsubmittedCheck.enabled': false,
    // Updates
    'app.update.enabled': false,
    'app.update.auto': false,
    'app.update.disabledForTesting': true,
    'app.update.checkInstallTime': false,
    'extensions.update.enabled': false,
    'extensions.update.autoUpdateDefault': false,
    'extensions.getAddons.cache.enabled': false,
    'extensions.systemAddon.update.enabled': false,
    'extensions.blocklist.enabled': false,
    'browser.search.update': false,
    'browser.search.geoip.url': '',
    'geo.provider.network.url': '',
    'browser.region.network.url': '',
    'browser.region.update.enabled': false,
    // Safe browsing
    'browser.safebrowsing.malware.enabled': false,
    'browser.safebrowsing.phishing.enabled': false,
    'browser.safebrowsing.downloads.enabled': false,
    'browser.safebrowsing.downloads.remote.enabled': false,
    'browser.safebrowsing.blockedURIs.enabled': false,
    'browser.safebrowsing.provider.google.updateURL': '',
    'browser.safebrowsing.provider.google4.updateURL': '',
    'browser.safebrowsing.provider.mozilla.updateURL': '',
    // Captive portal / connectivity
    'network.captive-portal-service.enabled': false,
    'network.connectivity-service.enabled': false,
    'captivedetect.canonicalURL': '',
    // Remote settings: point at a dead local address (needs MOZ_REMOTE_SETTINGS_DEVTOOLS=1)
    'services.settings.server': opts.settingsServer,
    'services.settings.poll_interval': 86400 * 365,
    'security.remote_settings.crlite_filters.enabled': false,
    'security.remote_settings.intermediates.enabled': false,
    'security.OCSP.enabled': 0,
    // Misc background networking
    'network.dns.disablePrefetch': true,
    'network.prefetch-next': false,
    'network.http.speculative-parallel-limit': 0,
    'network.predictor.enabled': false,
    'network.trr.mode': 5,
    'network.proxy.type': 0,
    'browser.newtabpage.enabled': false,
    'browser.newtabpage.activity-stream.feeds.telemetry': false,
    'browser.newtabpage.activity-stream.telemetry': false,
    'browser.newtabpage.activity-stream.feeds.snippets': false,
    'browser.newtabpage.activity-stream.feeds.topsites': false,
    'browser.newtabpage.activity-stream.feeds.section.topstories': false,
    'browser.newtabpage.activity-stream.default.sites': '',
    'browser.topsites.contile.enabled': false,
    'browser.startup.homepage': 'about:blank',
    'browser.startup.page': 0,
    'browser.startup.homepage_override.mstone': 'ignore',
    'startup.homepage_welcome_url': '',
    'startup.homepage_welcome_url.additional': '',
    'browser.aboutwelcome.enabled': false,
    'browser.shell.checkDefaultBrowser': false,
    'browser.sessionstore.resume_from_crash': false,
    'browser.uitour.enabled': false,
    'browser.contentblocking.report.lockwise.enabled': false,
    'signon.rememberSignons': false,
    'identity.fxaccounts.enabled': false,
    'media.gmp-manager.url': '',
    'media.gmp-gmpopenh264.enabled': false,
    'media.gmp-gmpopenh264.autoupdate': false,
    'media.gmp-widevinecdm.enabled': false,
    'dom.push.enabled': false,
    'dom.push.connection.enabled': false,
    // WebRTC
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.peerconnection.ice.loopback': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    'media.peerconnection.ice.default_address_only': false,
    'media.peerconnection.dtls.version.min': 771,
    // 771 = DTLS 1.2 (0xfefd in NSS terms: TLS 1.2 code point), 772 = DTLS 1.3
    'media.peerconnection.dtls.version.max': opts.dtls === '1.2' ? 771 : 772,
  };
  return (
    Object.entries(prefs)
      .map(([k, v]) => `user_pref(${JSON.stringify(k)}, ${JSON.stringify(v)});`)
      .join('\n') + '\n'
  );
}
