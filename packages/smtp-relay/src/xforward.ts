/**
 * xforward: the XFORWARD commands (Postfix XFORWARD_README) that carry the original client to the next
 * hop: only the attributes the server announced, values xtext-encoded, "[UNAVAILABLE]" for unknowns,
 * each command at most 512 characters.
 */
import type { ClientInfo } from '@moat/smtp-listener';

function xtext(value: string): string {
  let out = '';
  for (const ch of Buffer.from(value, 'utf8')) {
    out +=
      ch < 33 || ch > 126 || ch === 0x2b || ch === 0x3d
        ? `+${ch.toString(16).toUpperCase().padStart(2, '0')}`
        : String.fromCharCode(ch);
  }
  return out;
}

export function xforwardCommands(client: ClientInfo, announced: ReadonlySet<string>): string[] {
  const addr = client.address.includes(':') ? `IPV6:${client.address}` : client.address;
  const attrs: [string, string | undefined][] = [
    ['NAME', client.name && client.name !== 'unknown' ? client.name : undefined],
    ['ADDR', addr],
    ['PORT', client.port ? String(client.port) : undefined],
    ['PROTO', client.proto],
    ['HELO', client.helo || undefined],
    ['IDENT', client.ident],
  ];
  const commands: string[] = [];
  let current = 'XFORWARD';
  for (const [key, value] of attrs) {
    if (!announced.has(key)) continue;
    const part = ` ${key}=${value === undefined ? '[UNAVAILABLE]' : xtext(value.slice(0, 255))}`;
    if (current.length + part.length > 510 && current !== 'XFORWARD') {
      commands.push(current);
      current = 'XFORWARD';
    }
    current += part;
  }
  if (current !== 'XFORWARD') commands.push(current);
  return commands;
}
