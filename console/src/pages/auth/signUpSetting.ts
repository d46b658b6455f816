// Whether self-service sign-up is open (Query.settings, readable signed out).

import { useEffect, useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { post } from '../../api/transport';
import type { Settings } from '../../api/types';

/**
 * Whether to offer sign-up: undefined while asking. When the setting
 * cannot be read the form is offered, and the API's answer decides.
 */
export function useSignUpEnabled(): boolean | undefined {
  const [enabled, setEnabled] = useState<boolean | undefined>(undefined);
  useEffect(() => {
    let live = true;
    post<{ settings: Settings }>(doc.SETTINGS, undefined, null).then(
      (d) => live && setEnabled(d.settings.signUpEnabled),
      () => live && setEnabled(true),
    );
    return () => {
      live = false;
    };
  }, []);
  return enabled;
}
