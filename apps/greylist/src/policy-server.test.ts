/**
 * policy-server.test: the policy port's wire handling, on a real listener (port 0) and a real SQLite
 * store: requests split anywhere or sent back to back (CRLF or LF), answers in request order even when
 * a later one is decided first, and a request past the limits closed without an answer.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MoatConfig } from '@moat/config';
import { silentLogger } from '@moat/log';
import { openStore, type ReputationStore } from '@moat/reputation';
import { GreylistEngine } from './greylisting/engine.js';
import { compileClientWhitelist, compileRecipientWhitelist } from './greylisting/whitelist.js';
import { startPolicyServer } from './policy-server.js';
import { ENGINE_SETTINGS } from './test/settings.js';

const HELP = 'Greylisted, see http://postgrey.schweikert.ch/help/example.test.html';

let dir: string;
let store: ReputationStore;
let server: Awaited<ReturnType<typeof startPolicyServer>>;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-policy-'));
  store = await openStore('sqlite', { dataDir: dir });
  const engine = new GreylistEngine(ENGINE_SETTINGS, {
    store,
    clients: { current: compileClientWhitelist([]) },
    recipients: { current: compileRecipientWhitelist(['postmaster@']) },
  });
  const config = { greylist: { policyListen: '127.0.0.1:0', policyPeers: ['127.0.0.0/8'] } };
  server = await startPolicyServer(config as unknown as MoatConfig, engine, silentLogger());
});

afterEach(async () => {
  await server.close();
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function request(client: string, recipient: string, eol = '\n'): string {
  return (
    [
      'request=smtpd_access_policy',
      'protocol_state=RCPT',
      `client_address=${client}`,
      'client_name=unknown',
      'sender=a@remote.test',
      `recipient=${recipient}`,
    ].join(eol) +
    eol +
    eol
  );
}

/** Writes `chunks` one by one (a turn apart) and resolves with everything read until `answers` answers came. */
async function exchange(chunks: string[], answers: number): Promise<string[]> {
  const s = net.connect(server.address.port, '127.0.0.1');
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  let got = '';
  const done = new Promise<string[]>((resolve) =>
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      const blocks = got.split('\n\n').slice(0, -1);
      if (blocks.length >= answers) resolve(blocks);
    }),
  );
  for (const c of chunks) {
    s.write(c);
    await new Promise((r) => setImmediate(r));
  }
  const blocks = await done;
  s.destroy();
  return blocks;
}

describe('policy port wire', () => {
  it('answers requests sent back to back, in order, even when a later one is decided first', async () => {
    // the first needs the store, the second is a whitelisted recipient decided without it
    const both = request('192.0.2.1', 'bob@example.test') + request('192.0.2.2', 'postmaster@example.test');
    expect(await exchange([both], 2)).toEqual([`action=DEFER_IF_PERMIT ${HELP}`, 'action=DUNNO']);
  });

  it('reads a request split anywhere, with CRLF or LF line ends', async () => {
    const text = request('192.0.2.3', 'carol@example.test', '\r\n');
    const bytes = [...text];
    expect(await exchange(bytes, 1)).toEqual([`action=DEFER_IF_PERMIT ${HELP}`]);
    const halves = [
      text.slice(0, 40),
      text.slice(40) + request('192.0.2.3', 'dave@example.test').slice(0, 10),
    ];
    const rest = request('192.0.2.3', 'dave@example.test').slice(10);
    expect(await exchange([...halves, rest], 2)).toEqual([
      `action=DEFER_IF_PERMIT ${HELP}`,
      `action=DEFER_IF_PERMIT ${HELP}`,
    ]);
  });

  it('closes a request of more than 200 lines without an answer', async () => {
    const s = net.connect(server.address.port, '127.0.0.1');
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.write('request=smtpd_access_policy\n' + 'x=y\n'.repeat(200) + '\n');
    await closed;
    expect(got).toBe('');
  });
});
