/**
 * delivery: the reinjection smtpd and durable queue on 10025.
 */
import { z } from 'zod';
import { timer } from '../units.js';
import { internalListener } from './hop.js';

export const delivery = z
  .strictObject({
    ...internalListener('127.0.0.1:10025'),
    /** Maildir root: <maildir>/<domain>/<localpart>/{tmp,new,cur}; empty = <dataDir>/mail. */
    maildir: z.string().default(''),
    /** Queue folder owned by this replica; empty = <dataDir>/queue. */
    queueDir: z.string().default(''),
    /** How often deferred messages are retried. */
    queueRunDelay: timer('300s'),
  })
  .prefault({});
