/**
 * filter: the content filter on 10024 (amavisd-new's role).
 */
import { z } from 'zod';
import { hostPort, size } from '../units.js';
import { internalListener, nextHop } from './hop.js';

export const filter = z
  .strictObject({
    ...internalListener('127.0.0.1:10024'),
    ...nextHop(),
    /** quarantine addresses; empty = derived from quarantine.listen. */
    quarantine: z.array(hostPort()).default([]),
    /** Messages up to this size are spooled in memory, larger ones in a file under dataDir/filter. */
    spoolMemoryLimit: size('256k'),
  })
  .prefault({});
