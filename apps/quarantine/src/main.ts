/**
 * moat-quarantine: the quarantine store (10026) and, later, its web UI. `node apps/quarantine/dist/main.js`
 */
import { runService } from '@moat/service';
import { startQuarantine } from './service.js';

runService('quarantine', startQuarantine);
