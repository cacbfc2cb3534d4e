/**
 * The whole chain as five real processes: a message from the screen port into the Maildir, with swaks
 * and Postfix's smtp-source as the clients a user would use.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Chain, headerValues, maildirMessages, smtpSource, swaks, tmpDir, waitFor } from '@moat/testkit';

let chain: Chain;

beforeAll(async () => {
  chain = await Chain.create();
}, 60_000);

afterAll(async () => {
  await chain?.stop();
});

describe('a message through screen, greylist, filter and delivery', () => {
  it('lands in the Maildir with the path in its Received headers and the real client in every log', async () => {
    const r = await swaks([
      '--server',
      `127.0.0.1:${chain.ports.screen}`,
      '--local-interface',
      '127.0.0.5',
      '--ehlo',
      'client.remote.test',
      '--from',
      'alice@remote.test',
      '--to',
      'bob@example.test',
      '--header',
      'Subject: first message',
      '--body',
      'Hello through the chain.',
    ]);
    expect(r.exitCode, r.output).toBe(0);
    expect(r.replies[0]).toMatch(/^220 mx\.example\.test ESMTP/);
    expect(r.last).toBe('221 2.0.0 Bye');
    const queued = r.replies.find((l) => l.startsWith('250 2.0.0 Ok: queued as '));
    expect(queued, r.output).toBeDefined();
    const id = queued!.slice('250 2.0.0 Ok: queued as '.length);

    const [msg] = await chain.waitForMail('bob@example.test');
    expect(headerValues(msg!.text, 'Subject')).toEqual(['first message']);
    expect(headerValues(msg!.text, 'Return-Path')).toEqual(['<alice@remote.test>']);
    expect(headerValues(msg!.text, 'Delivered-To')).toEqual(['bob@example.test']);
    const received = headerValues(msg!.text, 'Received');
    // newest first: delivery, filter, greylist; each names the real client
    expect(received).toHaveLength(3);
    expect(received[0]).toMatch(
      /^from client\.remote\.test \(unknown \[127\.0\.0\.5\]\) by mx\.example\.test \(moat-delivery\) with ESMTP id \w+ for <bob@example\.test>;/,
    );
    expect(received[0]).toContain(`id ${id} `);
    expect(received[1]).toMatch(/\[127\.0\.0\.5\]\) by mx\.example\.test \(moat-filter\) with ESMTP id /);
    expect(received[2]).toMatch(
      /^from client\.remote\.test \(unknown \[127\.0\.0\.5\]\) by mx\.example\.test \(moat-greylist\) with ESMTP id /,
    );
    expect(msg!.text).toContain('Hello through the chain.');

    for (const name of ['filter', 'delivery'] as const) {
      const line = await chain
        .service(name)
        .waitForLog((l) => l.msg === (name === 'filter' ? 'passed' : 'queued'));
      expect(line.client).toBe('127.0.0.5');
    }
  });

  it('carries 100 messages from smtp-source, 10 sessions, all delivered', async () => {
    const before = maildirMessages(chain.maildir, 'load@example.test').length;
    const r = await smtpSource([
      '-s',
      '10',
      '-m',
      '100',
      '-l',
      '2048',
      '-f',
      'src@remote.test',
      '-t',
      'load@example.test',
      `127.0.0.1:${chain.ports.screen}`,
    ]);
    expect(r.status, r.output).toBe(0);
    await waitFor(
      () => maildirMessages(chain.maildir, 'load@example.test').length - before === 100 || undefined,
      10_000,
      '100 messages',
    );
  });
});

describe('the test chain itself', () => {
  it('removes the data folder it made when it stops, and keeps one it was given', async () => {
    const own = await Chain.create({ services: ['delivery'] });
    expect(fs.existsSync(own.dataDir)).toBe(true);
    await own.stop();
    expect(fs.existsSync(own.dataDir)).toBe(false);
    const given = tmpDir('moat-chain-given-');
    try {
      const kept = await Chain.create({ services: ['delivery'], dataDir: given });
      await kept.stop();
      expect(fs.existsSync(path.join(given, 'moat.yaml'))).toBe(true);
    } finally {
      fs.rmSync(given, { recursive: true, force: true });
    }
  });
});
