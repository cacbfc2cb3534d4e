/**
 * greylist: the MX smtpd behind screen (relay checks, limits, STARTTLS, later Postgrey's rules).
 */
import { z } from 'zod';
import { cidr, duration, size } from '../units.js';
import { internalListener, nextHop } from './hop.js';

export const greylist = z
  .strictObject({
    ...internalListener('127.0.0.1:10023'),
    /** Peers that put a PROXY v1 header first (screen's addresses); empty = the same as peers. */
    proxyPeers: z.array(cidr()).default([]),
    ...nextHop(),
    /** Largest message accepted, in bytes (Postfix: message_size_limit). Over it: 552 5.3.4. */
    messageSizeLimit: size('50MB'),
    /** Recipients per message (Postfix: smtpd_recipient_limit). Past it: 452 4.5.3. */
    recipientLimit: z.number().int().min(1).default(1000),
    /** Idle client between commands (Postfix: smtpd_timeout). */
    idleTimeout: duration('300s'),
  })
  .prefault({});
