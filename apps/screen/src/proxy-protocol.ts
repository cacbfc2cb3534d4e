/**
 * proxy-protocol: the PROXY protocol v1 header screen puts in front of a spliced connection, so greylist
 * (smtp-server's useProxy) sees the real client: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n".
 */
import net from 'node:net';
import { normalizeIp } from '@moat/config';

export function proxyV1Header(
  src: { address: string; port: number },
  dst: { address: string; port: number },
): Buffer {
  const s = normalizeIp(src.address);
  let d = normalizeIp(dst.address);
  const family = net.isIPv6(s) ? 'TCP6' : 'TCP4';
  // both ends must be of the same family; a v4 client on a v6 socket has a mapped local address
  if (family === 'TCP4' && net.isIPv6(d)) d = '127.0.0.1';
  if (family === 'TCP6' && !net.isIPv6(d)) d = `::ffff:${d}`;
  return Buffer.from(`PROXY ${family} ${s} ${d} ${src.port} ${dst.port}\r\n`, 'ascii');
}
