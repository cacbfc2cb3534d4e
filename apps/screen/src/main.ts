/**
 * moat-screen: the port-25 front door (postscreen's role). `node apps/screen/dist/main.js`
 */
import { runService } from '@moat/service';
import { startScreen } from './service.js';

runService('screen', startScreen);
