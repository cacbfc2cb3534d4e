/**
 * upstream-proxy: screen behind a load balancer (postscreen_upstream_proxy_protocol = haproxy). A peer
 * in upstreamProxyPeers must start with a PROXY v1 (text) or v2 (binary) header within
 * upstreamProxyTimeout; the client named in it is the one screened, logged and handed to greylist.
 * A peer outside that list is screened by its own address (its PROXY line, if any, is just a
 * pregreet), so nobody else can choose the address screen believes.
 *
 * Exports parseProxyHeader (pure: the bytes so far -> need more / the addresses and the rest / an
 * error) and readProxyHeader (reads one from a socket with its deadline).
 */
import net from 'node:net';
import { normalizeIp } from '@moat/config';

export interface ProxiedAddresses {
  /** undefined for PROXY UNKNOWN / v2 LOCAL: keep the peer's own addresses. */
  source?: { address: string; port: number };
  destination?: { address: string; port: number };
}

export type ProxyParse =
  | { kind: 'more' }
  | { kind: 'error'; reason: string }
  | { kind: 'ok'; addresses: ProxiedAddresses; rest: Buffer };

const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function v1(buf: Buffer): ProxyParse {
  const nl = buf.indexOf('\r\n');
  if (nl < 0)
    return buf.length > 107 ? { kind: 'error', reason: 'PROXY v1 line too long' } : { kind: 'more' };
  const parts = buf.subarray(0, nl).toString('latin1').split(' ');
  const rest = buf.subarray(nl + 2);
  if (parts[1] === 'UNKNOWN') return { kind: 'ok', addresses: {}, rest };
  const [, fam, src, dst, sport, dport] = parts;
  const want = fam === 'TCP4' ? 4 : fam === 'TCP6' ? 6 : 0;
  const sp = Number(sport);
  const dp = Number(dport);
  if (
    parts.length !== 6 ||
    !want ||
    net.isIP(src ?? '') !== want ||
    net.isIP(dst ?? '') !== want ||
    !(sp >= 0 && sp <= 65535 && /^\d+$/.test(sport!)) ||
    !(dp >= 0 && dp <= 65535 && /^\d+$/.test(dport!))
  ) {
    return { kind: 'error', reason: 'bad PROXY v1 line' };
  }
  return {
    kind: 'ok',
    addresses: {
      source: { address: normalizeIp(src!), port: sp },
      destination: { address: normalizeIp(dst!), port: dp },
    },
    rest,
  };
}

function ipv6(b: Buffer): string {
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i).toString(16));
  return normalizeIp(new net.SocketAddress({ address: words.join(':'), family: 'ipv6' }).address);
}

function v2(buf: Buffer): ProxyParse {
  if (buf.length < 16) return { kind: 'more' };
  const verCmd = buf[12]!;
  const fam = buf[13]!;
  const len = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) return { kind: 'error', reason: 'bad PROXY v2 version' };
  if (buf.length < 16 + len) return { kind: 'more' };
  const body = buf.subarray(16, 16 + len);
  const rest = buf.subarray(16 + len);
  const cmd = verCmd & 0x0f;
  if (cmd === 0) return { kind: 'ok', addresses: {}, rest }; // LOCAL: health checks
  if (cmd !== 1) return { kind: 'error', reason: 'bad PROXY v2 command' };
  if (fam >> 4 === 1 && body.length >= 12) {
    const a = (o: number) => `${body[o]}.${body[o + 1]}.${body[o + 2]}.${body[o + 3]}`;
    return {
      kind: 'ok',
      addresses: {
        source: { address: a(0), port: body.readUInt16BE(8) },
        destination: { address: a(4), port: body.readUInt16BE(10) },
      },
      rest,
    };
  }
  if (fam >> 4 === 2 && body.length >= 36) {
    return {
      kind: 'ok',
      addresses: {
        source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
        destination: { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
      },
      rest,
    };
  }
  if (fam >> 4 === 0) return { kind: 'ok', addresses: {}, rest };
  return { kind: 'error', reason: 'unsupported PROXY v2 address family' };
}

export function parseProxyHeader(buf: Buffer): ProxyParse {
  const n = Math.min(buf.length, V2_SIG.length);
  if (buf.subarray(0, n).equals(V2_SIG.subarray(0, n))) return n < V2_SIG.length ? { kind: 'more' } : v2(buf);
  const p = Math.min(buf.length, 6);
  if (buf.subarray(0, p).toString('latin1') !== 'PROXY '.slice(0, p)) {
    return { kind: 'error', reason: 'no PROXY header' };
  }
  return p < 6 ? { kind: 'more' } : v1(buf);
}

/** Reads the header off `socket` within timeoutMs; rejects with the reason. */
export function readProxyHeader(
  socket: net.Socket,
  timeoutMs: number,
): Promise<{ addresses: ProxiedAddresses; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const finish = (err?: Error, value?: { addresses: ProxiedAddresses; rest: Buffer }) => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      socket.pause();
      if (err) reject(err);
      else resolve(value!);
    };
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const r = parseProxyHeader(buf);
      if (r.kind === 'more') return;
      if (r.kind === 'error') finish(new Error(r.reason));
      else finish(undefined, { addresses: r.addresses, rest: r.rest });
    };
    const onClose = () => finish(new Error('closed before the PROXY header'));
    const timer = setTimeout(() => finish(new Error('PROXY header timed out')), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
  });
}
