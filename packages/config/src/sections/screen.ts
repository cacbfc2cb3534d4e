/**
 * screen: the port-25 front door (postscreen's role).
 */
import { z } from 'zod';
import { duration, hostPort } from '../units.js';

export const screen = z
  .strictObject({
    /** Public listener (port 25 in production; 2525 when not root). */
    listen: hostPort().default('0.0.0.0:2525'),
    /** greylist addresses (all replicas); empty = derived from greylist.listen. */
    next: z.array(hostPort()).default([]),
    /** Connecting to greylist; past it the client gets 421 4.3.2. */
    nextConnectTimeout: duration('5s'),
  })
  .prefault({});
