/**
 * moat-filter: the content filter (10024). `node apps/filter/dist/main.js`
 */
import { runService } from '@moat/service';
import { startFilter } from './service.js';

runService('filter', startFilter);
