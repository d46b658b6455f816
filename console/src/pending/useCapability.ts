import { useEffect, useState } from 'preact/hooks';

import { supports, type Capability } from './capabilities';

/** Whether the server offers `cap`: undefined while asking. */
export function useCapability(cap: Capability): boolean | undefined {
  const [ok, setOk] = useState<boolean | undefined>(undefined);
  useEffect(() => {
    let live = true;
    void supports(cap).then((v) => live && setOk(v));
    return () => {
      live = false;
    };
  }, [cap]);
  return ok;
}
