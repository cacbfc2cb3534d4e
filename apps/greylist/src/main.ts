/**
 * moat-greylist: the MX smtpd behind screen (10023). `node apps/greylist/dist/main.js`
 */
import { runService } from '@moat/service';
import { startGreylist } from './service.js';

runService('greylist', startGreylist);
