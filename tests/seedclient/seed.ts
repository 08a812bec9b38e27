// The seed's client classes, copied verbatim from shared/seed/000_06c43e5b4858ffaf.txt
// ("Usage Examples": "Client-Side Connection" and "Canvas Collaboration Example").
// The only change: the URL in MailyWebSocket.connect() uses SERVER_URL (defined in glue.ts)
// instead of wss://api.maily.com. Everything the seed leaves undefined is in glue.ts.

// WebSocket client implementation
class MailyWebSocket {
  private socket: WebSocket | null = null;
  private sessionId: string | null = null;
  private reconnectAttempts = 0;
  private reconnectTimer: any = null;
  private messageHandlers: Map<string, Function[]> = new Map();
  
  constructor(private authToken: string) {}
  
  public connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      try {
        const url = `${SERVER_URL}/ws?token=${this.authToken}`;
        this.socket = new WebSocket(url);
        
        this.socket.onopen = () => {
          // Reset reconnection attempts on successful connection
          this.reconnectAttempts = 0;
          
          // Initialize connection
          this.send({
            type: "connection_init",
            timestamp: new Date().toISOString(),
            data: {
              clientInfo: {
                version: APP_VERSION,
                platform: 'web'
              }
            }
          });
          
          resolve();
        };
        
        this.socket.onclose = (event) => {
          // Handle reconnection
          if (!event.wasClean) {
            this.scheduleReconnect();
          }
        };
        
        this.socket.onerror = (error) => {
          console.error('WebSocket error:', error);
          reject(error);
        };
        
        this.socket.onmessage = (event) => {
          const message = JSON.parse(event.data);
          
          // Handle connection acknowledgment
          if (message.type === 'connection_ack') {
            this.sessionId = message.sessionId;
          }
          
          // Dispatch message to registered handlers
          this.dispatchMessage(message);
        };
      } catch (error) {
        reject(error);
      }
    });
  }
  
  public subscribe(channel: string, options: any = {}): void {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
      throw new Error('WebSocket is not connected');
    }
    
    this.send({
      type: "subscribe",
      sessionId: this.sessionId,
      timestamp: new Date().toISOString(),
      data: {
        channel,
        options
      }
    });
  }
  
  public send(message: any): void {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
      throw new Error('WebSocket is not connected');
    }
    
    // Add trace ID and session ID if not provided
    if (!message.traceId) {
      message.traceId = generateTraceId();
    }
    
    if (this.sessionId && !message.sessionId) {
      message.sessionId = this.sessionId;
    }
    
    this.socket.send(JSON.stringify(message));
  }
  
  public on(messageType: string, handler: Function): void {
    if (!this.messageHandlers.has(messageType)) {
      this.messageHandlers.set(messageType, []);
    }
    
    this.messageHandlers.get(messageType)!.push(handler);
  }
  
  private dispatchMessage(message: any): void {
    if (this.messageHandlers.has(message.type)) {
      for (const handler of this.messageHandlers.get(message.type)!) {
        handler(message);
      }
    }
  }
  
  private scheduleReconnect(): void {
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
    }
    
    // Exponential backoff with jitter
    const delay = Math.min(1000 * (2 ** this.reconnectAttempts) + Math.random() * 1000, 30000);
    
    this.reconnectTimer = setTimeout(() => {
      this.reconnectAttempts++;
      this.connect().catch(() => {
        // If reconnection fails, schedule another attempt
        if (this.reconnectAttempts < 10) {
          this.scheduleReconnect();
        }
      });
    }, delay);
  }
}

// Canvas collaboration implementation
class CollaborativeCanvas {
  private websocket: MailyWebSocket;
  private canvasId: string;
  private localUser: User;
  
  constructor(canvasId: string, authToken: string, user: User) {
    this.canvasId = canvasId;
    this.localUser = user;
    this.websocket = new MailyWebSocket(authToken);
    
    // Setup event handlers
    this.websocket.on('canvas_updated', this.handleCanvasUpdate.bind(this));
    this.websocket.on('cursor_moved', this.handleCursorMove.bind(this));
    this.websocket.on('ai_response', this.handleAIResponse.bind(this));
  }
  
  public async connect(): Promise<void> {
    await this.websocket.connect();
    
    // Subscribe to canvas channels
    this.websocket.subscribe(`canvas:${this.canvasId}`);
    this.websocket.subscribe(`canvas:${this.canvasId}:cursor`);
    this.websocket.subscribe(`canvas:${this.canvasId}:ai`);
    
    // Start cursor tracking
    this.startCursorTracking();
  }
  
  public updateElement(elementId: string, properties: any): void {
    this.websocket.send({
      type: "canvas_update",
      data: {
        canvasId: this.canvasId,
        action: "update",
        elementId,
        properties,
        user: {
          id: this.localUser.id,
          name: this.localUser.name
        }
      }
    });
  }
  
  public requestAIAssistance(prompt: string): void {
    this.websocket.send({
      type: "ai_request",
      data: {
        canvasId: this.canvasId,
        prompt,
        context: {
          selectedElements: this.getSelectedElementIds()
        }
      }
    });
  }
  
  private handleCanvasUpdate(message: any): void {
    const { action, elementId, properties, user } = message.data;
    
    // Skip updates from the local user
    if (user.id === this.localUser.id) {
      return;
    }
    
    // Apply the update to the canvas
    switch (action) {
      case 'add':
        this.addElement(elementId, properties);
        break;
      case 'update':
        this.updateElementLocal(elementId, properties);
        break;
      case 'delete':
        this.deleteElement(elementId);
        break;
    }
    
    // Show notification of change
    this.showUserActivity(user, action);
  }
  
  private handleCursorMove(message: any): void {
    const { position, user } = message.data;
    
    // Skip cursor updates from the local user
    if (user.id === this.localUser.id) {
      return;
    }
    
    // Update remote cursor position
    this.updateRemoteCursor(user.id, position, user);
  }
  
  private handleAIResponse(message: any): void {
    const { suggestions } = message.data;
    
    // Display AI suggestions to the user
    this.showAISuggestions(suggestions);
  }
  
  // Additional methods and implementation details...
}
