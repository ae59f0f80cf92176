export { StreamFramer } from '../wire/channeldata.js';
