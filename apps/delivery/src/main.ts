/**
 * moat-delivery: the reinjection smtpd and durable queue (10025). `node apps/delivery/dist/main.js`
 */
import { runService } from '@moat/service';
import { startDelivery } from './service.js';

runService('delivery', startDelivery);
