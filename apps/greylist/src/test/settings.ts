/**
 * test/settings: the engine settings the greylist unit tests share (Postgrey's defaults, AWL at 5,
 * screen trust on). Exports ENGINE_SETTINGS; tests spread their own changes over it.
 */
import type { EngineSettings } from '../greylisting/engine.js';

const S = 1000;
const DAY = 86_400 * S;

export const ENGINE_SETTINGS: EngineSettings = {
  hostname: 'mx.example.test',
  lookupBy: 'subnet',
  ipv4Cidr: 24,
  ipv6Cidr: 64,
  delay: 300 * S,
  retryWindow: 2 * DAY,
  maxAge: 35 * DAY,
  autoWhitelistClients: 5,
  text: '',
  helpUrl: 'http://postgrey.schweikert.ch/help/%r.html',
  xGreylistHeader: 'X-Greylist: delayed %t seconds by moat-greylist at %h; %d',
  trustScreen: true,
  trustScreenTests: [],
};
