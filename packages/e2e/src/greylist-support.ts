/**
 * greylist-support: what the greylist end-to-end tests and the greylist benchmark share: a tiny UDP
 * DNS server (node:dgram) that serves TXT records (SPF policies) for chosen names and NXDOMAIN for
 * everything else (so reverse lookups fail at once), and a Postfix policy-protocol client.
 */
import dgram from 'node:dgram';
import net from 'node:net';

export interface TinyDns {
  port: number;
  server: string;
  close(): Promise<void>;
}

function readName(msg: Buffer, offset: number): { name: string; end: number } {
  const labels: string[] = [];
  let i = offset;
  while (msg[i]! !== 0) {
    const len = msg[i]!;
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('latin1'));
    i += len + 1;
  }
  return { name: labels.join('.').toLowerCase(), end: i + 1 };
}

/** TXT answers for `txt` (name -> strings); every other question gets NXDOMAIN. */
export async function startTinyDns(txt: Record<string, string[]>): Promise<TinyDns> {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    if (msg.length < 12) return;
    const { name, end } = readName(msg, 12);
    const qtype = msg.readUInt16BE(end);
    const question = msg.subarray(12, end + 4);
    const records = qtype === 16 ? txt[name] : undefined;
    const header = Buffer.alloc(12);
    msg.copy(header, 0, 0, 2); // id
    header.writeUInt16BE(0x8180 | (records ? 0 : 3), 2); // response, RD+RA, NOERROR or NXDOMAIN
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(records ? records.length : 0, 6);
    const answers = (records ?? []).map((text) => {
      const data = Buffer.from(text, 'latin1');
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0); // pointer to the question's name
      rr.writeUInt16BE(16, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(60, 6);
      rr.writeUInt16BE(data.length + 1, 10);
      return Buffer.concat([rr, Buffer.from([data.length]), data]);
    });
    sock.send(Buffer.concat([header, question, ...answers]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  const port = sock.address().port;
  return {
    port,
    server: `127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}

/**
 * One connection to a policy server; ask() sends one request and reads its `action=` answer, send()
 * does the same with a request already encoded (policyRequestBytes), as a load generator would.
 */
export class PolicyClient {
  #buffer = '';
  #waiters: ((a: string) => void)[] = [];
  #answers: string[] = [];
  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.#buffer = this.#buffer === '' ? d.toString('latin1') : this.#buffer + d.toString('latin1');
      let end: number;
      while ((end = this.#buffer.indexOf('\n\n')) !== -1) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const action = block.startsWith('action=') ? block.slice(7) : block;
        const w = this.#waiters.shift();
        if (w) w(action);
        else this.#answers.push(action);
      }
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<PolicyClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, host);
      s.once('connect', () => resolve(new PolicyClient(s)));
      s.once('error', reject);
    });
  }

  ask(attrs: Record<string, string>): Promise<string> {
    return this.send(policyRequestBytes(attrs));
  }

  send(request: Buffer): Promise<string> {
    this.socket.write(request);
    const ready = this.#answers.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A request on the wire: `name=value` lines and the empty line that ends it. */
export function policyRequestBytes(attrs: Record<string, string>): Buffer {
  let text = '';
  for (const [k, v] of Object.entries(attrs)) text += `${k}=${v}\n`;
  return Buffer.from(text + '\n', 'utf8');
}

/** A request as Postfix sends it at RCPT. */
export function policyRequest(
  client: string,
  sender: string,
  recipient: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    request: 'smtpd_access_policy',
    protocol_state: 'RCPT',
    protocol_name: 'ESMTP',
    client_address: client,
    client_name: 'unknown',
    reverse_client_name: 'unknown',
    helo_name: 'client.remote.test',
    sender,
    recipient,
    recipient_count: '0',
    queue_id: '',
    instance: `${Math.random().toString(16).slice(2)}.${Date.now()}`,
    size: '0',
    ...extra,
  };
}
