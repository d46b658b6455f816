// QR codes drawn on a canvas (what Outline and v2ray-plugin apps scan), from
// the matrix uqr computes: no image URL, nothing fetched from elsewhere. The
// encoder is loaded when a code is first shown, not with the console.

import { useEffect, useRef, useState } from 'preact/hooks';

export function QrCode(props: { value: string; label: string; testId?: string }) {
  const ref = useRef<HTMLCanvasElement>(null);
  const [ready, setReady] = useState(false);
  useEffect(() => {
    let live = true;
    setReady(false);
    void import('uqr').then(({ encode }) => {
      const canvas = ref.current;
      const ctx = canvas?.getContext('2d');
      if (!live || !canvas || !ctx) return;
      const qr = encode(props.value, { ecc: 'M', border: 4 });
      const scale = Math.max(3, Math.floor(264 / qr.size));
      canvas.width = qr.size * scale;
      canvas.height = qr.size * scale;
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = '#000';
      qr.data.forEach((row, y) =>
        row.forEach((dark, x) => {
          if (dark) ctx.fillRect(x * scale, y * scale, scale, scale);
        }),
      );
      setReady(true);
    });
    return () => {
      live = false;
    };
  }, [props.value]);
  return (
    <canvas
      ref={ref}
      class="qr"
      role="img"
      aria-label={props.label}
      aria-busy={ready ? undefined : 'true'}
      data-ready={ready ? 'true' : 'false'}
      data-testid={props.testId}
    />
  );
}
