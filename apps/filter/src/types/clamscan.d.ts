/**
 * Types for the parts of `clamscan` (2.4, untyped) the filter uses: NodeClamTransform, which frames a
 * byte stream as clamd's zINSTREAM command (`zINSTREAM\0`, then `<uint32 BE length><bytes>` chunks,
 * then a zero length). The scanner class itself is declared for completeness of the import path only.
 */
declare module 'clamscan/lib/NodeClamTransform.js' {
  import { Transform, type TransformOptions } from 'node:stream';
  class NodeClamTransform extends Transform {
    constructor(options?: TransformOptions, debugMode?: boolean);
  }
  export = NodeClamTransform;
}

declare module 'clamscan' {
  class NodeClam {
    init(options?: Record<string, unknown>): Promise<NodeClam>;
    scanStream(
      stream: import('node:stream').Readable,
    ): Promise<{ isInfected: boolean | null; viruses: string[]; resultString?: string; timeout?: boolean }>;
  }
  export = NodeClam;
}
