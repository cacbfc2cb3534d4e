/**
 * smtp-client: a raw SMTP client for tests that need exact control: any 127.x source address, commands
 * sent one by one or pipelined, bytes sent as given (bare LF, half a body), the exact reply lines read
 * back, the connection dropped mid-DATA.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface TestReply {
  code: number;
  /** Whole reply lines, e.g. ["250-mx.example.test", "250 PIPELINING"]. */
  lines: string[];
  /** The last line, e.g. "554 5.7.1 <a@b>: Relay access denied". */
  text: string;
}

export class SmtpClient {
  #socket: net.Socket;
  #buffer = '';
  #lines: string[] = [];
  #waiters: { resolve(r: TestReply): void; reject(e: Error): void }[] = [];
  #replies: TestReply[] = [];
  #closed = false;
  #error: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.#attach(socket);
  }

  #attach(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#error = err;
    });
    socket.on('close', () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w.reject(this.#error ?? new Error('connection closed'));
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  static connect(port: number, opts: { host?: string; localAddress?: string } = {}): Promise<SmtpClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: opts.host ?? '127.0.0.1', port, localAddress: opts.localAddress });
      socket.once('connect', () => resolve(new SmtpClient(socket)));
      socket.once('error', reject);
    });
  }

  #onData(chunk: Buffer): void {
    this.#buffer += chunk.toString('utf8');
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, nl).replace(/\r$/, '');
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#lines.push(line);
      if (/^\d{3}( |$)/.test(line) || !/^\d{3}-/.test(line)) {
        const r: TestReply = { code: Number(line.slice(0, 3)), lines: this.#lines, text: line };
        this.#lines = [];
        const w = this.#waiters.shift();
        if (w) w.resolve(r);
        else this.#replies.push(r);
      }
    }
  }

  /** The next reply (already received or still to come). */
  read(timeoutMs = 10_000): Promise<TestReply> {
    const ready = this.#replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#closed) return Promise.reject(this.#error ?? new Error('connection closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const w = {
        resolve: (r: TestReply) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#waiters.push(w);
    });
  }

  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  /** Sends one command line and reads its reply. */
  async cmd(line: string, timeoutMs?: number): Promise<TestReply> {
    this.write(line + '\r\n');
    return this.read(timeoutMs);
  }

  /** Upgrades to TLS after a 220 to STARTTLS (certificate not verified: test certificates). */
  async startTls(): Promise<void> {
    const plain = this.#socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.#socket = secure;
    this.#attach(secure as unknown as net.Socket);
  }

  /** MAIL, RCPTs, DATA, body (dot-stuffed here), final dot: returns every reply in order. */
  async send(
    from: string,
    to: string[],
    body: string,
  ): Promise<{ mail: TestReply; rcpt: TestReply[]; data?: TestReply; final?: TestReply }> {
    const mail = await this.cmd(`MAIL FROM:<${from}>`);
    const rcpt: TestReply[] = [];
    for (const t of to) rcpt.push(await this.cmd(`RCPT TO:<${t}>`));
    if (mail.code >= 300 || rcpt.every((r) => r.code >= 300)) return { mail, rcpt };
    const data = await this.cmd('DATA');
    if (data.code !== 354) return { mail, rcpt, data };
    const stuffed = body.replace(/\r\n\./g, '\r\n..').replace(/^\./, '..');
    this.write(stuffed + (stuffed.endsWith('\r\n') ? '' : '\r\n') + '.\r\n');
    const final = await this.read();
    return { mail, rcpt, data, final };
  }

  destroy(): void {
    this.#socket.destroy();
  }

  async quit(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.cmd('QUIT', 2000);
    } catch {
      // already gone
    }
    this.#socket.destroy();
  }
}

/** A minimal message with CRLF line endings. */
export function message(
  opts: { from?: string; to?: string; subject?: string; body?: string; headers?: string[] } = {},
): string {
  const lines = [
    `From: <${opts.from ?? 'sender@remote.test'}>`,
    `To: <${opts.to ?? 'user@example.test'}>`,
    `Subject: ${opts.subject ?? 'test'}`,
    `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@remote.test>`,
    `Date: ${new Date().toUTCString()}`,
    ...(opts.headers ?? []),
    '',
    opts.body ?? 'Hello.',
  ];
  return lines.join('\r\n') + '\r\n';
}
