function twinrigSendFrame(src, evt, varargin)
% TWINRIGSENDFRAME  ScanImage user function: streams every acquired frame to `rig run`
% in the twinrig frame protocol, version 1 (docs/frame-protocol.md).
%
% UNTESTED HERE: there is no MATLAB or ScanImage on the machine this was written on. The byte
% layout matches tools/scanimage/send_frames.py and `rig stream`, which are tested; the ScanImage
% field names (hDisplay.stripeDataBuffer, roiData{1}.imageData, frameNumberAcq, frameTimestamp,
% zIdx) follow ScanImage's StripeData/RoiData classes and should be checked on the rig before use.
%
% Setup (ScanImage > Settings > User Functions), the same function for four events:
%   acqModeStart   twinrigSendFrame   {'127.0.0.1', 7700}
%   frameAcquired  twinrigSendFrame   {'127.0.0.1', 7700}
%   acqModeDone    twinrigSendFrame   {'127.0.0.1', 7700}
%   acqAbort       twinrigSendFrame   {'127.0.0.1', 7700}
% Optional third argument: channel (default 1). Optional fourth: 'clip' (default; negative ADC
% values become 0) or 'offset' (adds 32768, keeping the full int16 range).
%
% What it sends: each frame of the chosen channel as u16, row-major (ScanImage's imageData is
% stored transposed, so its memory order already is the image's row-major order); index =
% frameNumberAcq - 1; plane = zIdx - 1; timestamp = frameTimestamp (seconds since the acquisition
% started) on the sender's clock (clock = 1), which `rig` shifts onto its rig clock.
%
% Blocking: the socket write blocks while `rig` applies TCP back-pressure (recorder behind). `rig`
% never blocks a sender for longer than its stall timeout (10 s). On any socket error the
% connection is dropped, a warning printed, and frames are skipped until the next acqModeStart.

persistent sock out nSent
host = '127.0.0.1'; port = 7700; chan = 1; mode = 'clip';
if numel(varargin) >= 1, host = varargin{1}; end
if numel(varargin) >= 2, port = varargin{2}; end
if numel(varargin) >= 3, chan = varargin{3}; end
if numel(varargin) >= 4, mode = varargin{4}; end

switch evt.EventName
    case 'acqModeStart'
        closeQuietly();
        try
            sock = java.net.Socket(host, port);
            sock.setTcpNoDelay(true);
            out = java.io.BufferedOutputStream(sock.getOutputStream(), 2^20);
            nSent = 0;
            fprintf('twinrig: streaming frames to %s:%d\n', host, port);
        catch err
            warning('twinrig:connect', 'twinrig: cannot connect to %s:%d: %s', host, port, err.message);
            sock = []; out = [];
        end

    case 'frameAcquired'
        if isempty(out), return; end
        hSI = src.hSI;
        stripe = hSI.hDisplay.stripeDataBuffer{hSI.hDisplay.stripeDataBufferPointer};
        img = stripe.roiData{1}.imageData{chan}{1};      % int16, [width x height] (transposed)
        if strcmp(mode, 'offset')
            px = uint16(int32(img) + 32768);
        else
            px = uint16(max(img, 0));
        end
        width = size(img, 1); height = size(img, 2);
        plane = 0;
        if isprop(stripe, 'zIdx') && ~isempty(stripe.zIdx), plane = stripe.zIdx - 1; end
        hdr = header(1, stripe.frameNumberAcq - 1, stripe.frameTimestamp, height, width, plane, 1, 1);
        try
            out.write(typecast(hdr, 'int8'));
            out.write(typecast(px(:)', 'int8'));        % little-endian on Windows/x86
            out.flush();
            nSent = nSent + 1;
        catch err
            warning('twinrig:send', 'twinrig: send failed (%s); frames skipped until the next acquisition', err.message);
            closeQuietly();
        end

    case {'acqModeDone', 'acqAbort'}
        if isempty(out), return; end
        try
            out.write(typecast(header(2, nSent, 0, 0, 0, 0, 0, 0), 'int8'));
            out.flush();
            sock.setSoTimeout(5000);
            in = java.io.BufferedReader(java.io.InputStreamReader(sock.getInputStream()));
            fprintf('twinrig: %d frames sent; rig says: %s\n', nSent, char(in.readLine()));
        catch err
            warning('twinrig:finish', 'twinrig: end of stream: %s', err.message);
        end
        closeQuietly();
end

    function closeQuietly()
        try
            if ~isempty(sock), sock.close(); end
        catch
        end
        sock = []; out = [];
    end
end

function b = header(kind, index, timestamp, height, width, plane, clock, dtype)
% The 64-byte header: fields (little-endian), then the CRC-32 of bytes 0..59.
payloadLen = uint64(height) * uint64(width) * 2 * uint64(kind == 1);
b = [uint8('TRIGFRM1'), ...
     typecast(uint16(1), 'uint8'), ...            % version
     typecast(uint16(kind), 'uint8'), ...
     typecast(uint16(plane), 'uint8'), ...
     typecast(uint16(dtype), 'uint8'), ...
     typecast(uint64(index), 'uint8'), ...
     typecast(double(timestamp), 'uint8'), ...
     typecast(uint32(height), 'uint8'), ...
     typecast(uint32(width), 'uint8'), ...
     typecast(payloadLen, 'uint8'), ...
     typecast(uint16(clock), 'uint8'), ...
     zeros(1, 10, 'uint8')];                      % reserved
crc = java.util.zip.CRC32();
crc.update(typecast(b, 'int8'));
b = [b, typecast(uint32(crc.getValue()), 'uint8')];
end
