/**
 * quarantine: the store on 10026 and its web UI.
 */
import { z } from 'zod';
import { hostPort } from '../units.js';
import { internalListener, nextHop } from './hop.js';

export const quarantine = z
  .strictObject({
    ...internalListener('127.0.0.1:10026'),
    /** Web UI and JSON API. */
    http: hostPort().default('127.0.0.1:8080'),
    /** Where released messages go (delivery); empty = derived from delivery.listen. */
    ...nextHop(),
    /** Store folder; empty = <dataDir>/quarantine. */
    storeDir: z.string().default(''),
  })
  .prefault({});
