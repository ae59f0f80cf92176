// Issue 14: recording.video_container (webm | ivf), its default and a located error.
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';

t.test('recording.video_container', async (t) => {
  t.equal(defaultConfig().recording.video_container, 'webm', 'WebM by default: browsers play it');
  t.equal(parseConfig('recording:\n  video_container: ivf\n', 'f.yaml').recording.video_container, 'ivf');
  t.equal(parseConfig('recording:\n  video_container: webm\n', 'f.yaml').recording.video_container, 'webm');
  t.throws(() => parseConfig('recording:\n  video_container: mkv\n', 'f.yaml'), /^f\.yaml:2:20: recording\.video_container: .*webm.*ivf/);
  t.throws(() => parseConfig('recording:\n  video_containr: ivf\n', 'f.yaml'), /video_containr/);
});
